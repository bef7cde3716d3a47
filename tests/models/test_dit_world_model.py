import pytest
import torch

from rlir.models import DiTWorldModel, available_backends
from rlir.models.dit_world_model import frame_causal_mask, shifted_neighbourhood
from rlir.models.tokenizer import VQTokenizer

TINY = dict(in_channels=4, frame_size=4, patch_size=2, action_head_sizes=[5, 3], n_layers=2, d_model=32,
            n_heads=4, max_frames=6)


def make_model(seed: int = 0, **overrides) -> DiTWorldModel:
    """A tiny model with every weight perturbed: adaLN-Zero starts at exactly zero velocity, which would make
    every comparison below trivially pass."""
    torch.manual_seed(seed)
    model = DiTWorldModel(**{**TINY, **overrides}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def random_clip(model: DiTWorldModel, batch: int, frames: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    x = torch.randn(batch, frames, cfg.in_channels, *model.frame_shape, generator=g)
    actions = torch.stack([torch.randint(0, n, (batch, frames - 1), generator=g) for n in model.head_sizes], -1)
    return x, actions


def teacher_forced(model, frames, actions, sigma):
    t = frames.shape[1]
    return model(frames[:, 1:] * 0.5, sigma, actions, clean=frames[:, :-1], frame_index=torch.arange(1, t))


def test_frame_causal_mask_layout():
    mask = frame_causal_mask(3, torch.tensor([1, 2, 2]))
    assert mask.int().tolist() == [
        [1, 0, 0, 0, 0, 0],  # clean frames attend causally
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 0, 0, 1, 0, 0],  # noisy frame 1: clean frame 0 and itself
        [1, 1, 0, 0, 1, 0],  # two noisy slots of frame 2 never see each other
        [1, 1, 0, 0, 0, 1],
    ]


# The previous frame as input (the default), and also read one cell away in each direction.
PREVIOUS_FRAME = pytest.mark.parametrize("previous", [{}, {"previous_frame_neighbourhood": True}])


@PREVIOUS_FRAME
def test_frame_causality_in_the_training_forward(previous):
    model = make_model(**previous)
    frames, actions = random_clip(model, batch=2, frames=5)
    sigma = torch.rand(2, 4)
    v = teacher_forced(model, frames, actions, sigma)
    assert v.shape == (2, 4, 4, 4, 4)
    k = 2  # change frames 3.. and the actions leading to them: outputs of frames <= 2 must not move
    later, later_actions = frames.clone(), actions.clone()
    later[:, k + 1:] += 1.0
    later_actions[:, k:, 0] = (later_actions[:, k:, 0] + 1) % 5
    changed = teacher_forced(model, later, later_actions, sigma)
    torch.testing.assert_close(changed[:, :k], v[:, :k], atol=1e-6, rtol=1e-6)  # noisy slots of frames 1..k
    assert not torch.allclose(changed[:, k], v[:, k])  # frame 3 itself changed
    # Within a frame attention is bidirectional: the last patch of frame 1 moves its first patch's output.
    poked = frames.clone()
    poked[:, 1, :, -1, -1] += 1.0
    out = teacher_forced(model, poked, actions, sigma)
    assert not torch.allclose(out[:, 0, :, :2, :2], v[:, 0, :, :2, :2])


def test_the_action_conditions_only_its_frame():
    model = make_model()
    frames, actions = random_clip(model, batch=2, frames=4)
    sigma = torch.rand(2, 3)
    v = teacher_forced(model, frames, actions, sigma)
    other = actions.clone()
    other[:, 1, 1] = (other[:, 1, 1] + 1) % 3  # action 1 leads from frame 1 to frame 2
    steered = teacher_forced(model, frames, other, sigma)
    torch.testing.assert_close(steered[:, 0], v[:, 0], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(steered[:, 1], v[:, 1])


@PREVIOUS_FRAME
def test_cached_velocity_equals_the_teacher_forced_forward(previous):
    model = make_model(**previous)
    frames, actions = random_clip(model, batch=3, frames=4)
    noisy, sigma = torch.randn(3, 4, 4, 4), torch.rand(3)
    with torch.no_grad():
        expected = model(noisy[:, None], sigma[:, None], actions, clean=frames[:, :3], frame_index=[3])[:, 0]
        per_frame = model.frame_actions(actions)
        cache = model.new_cache(3, 4)
        model.cache_frames(frames[:, :2], per_frame[:, :2], cache)  # a prefill of two frames, then one more
        with pytest.raises(ValueError, match="before"):
            model.cache_frames(frames[:, 2:3], per_frame[:, 2:3], cache)
        model.cache_frames(frames[:, 2:3], per_frame[:, 2:3], cache, before=frames[:, 1])
        assert cache.length == 3 * model.tokens_per_frame
        cached = model.cached_velocity(noisy, sigma, per_frame[:, 3], cache, previous=frames[:, 2])
        assert cache.length == 3 * model.tokens_per_frame  # denoising steps leave the cache as it was
    torch.testing.assert_close(cached, expected, atol=1e-5, rtol=1e-5)


def test_the_neighbourhood_input_is_the_previous_frame_shifted_one_cell():
    x = torch.arange(2 * 3 * 4.0).view(1, 2, 3, 4)  # [.., C=2, rows 3, cols 4]
    shifted = shifted_neighbourhood(x)
    assert shifted.shape == (1, 10, 3, 4)
    torch.testing.assert_close(shifted[:, :2], x)  # the cell itself
    torch.testing.assert_close(shifted[:, 2:4, 1:], x[:, :, :-1])  # up: row r reads row r - 1
    assert (shifted[:, 2:4, 0] == 0).all()
    torch.testing.assert_close(shifted[:, 8:10, :, :-1], x[:, :, :, 1:])  # right: col c reads col c + 1
    assert (shifted[:, 8:10, :, -1] == 0).all()
    with pytest.raises(ValueError, match="previous_frame_neighbourhood needs previous_frame_input"):
        make_model(previous_frame_input=False, previous_frame_neighbourhood=True)


def test_loss_trains_on_the_non_context_frames():
    model = make_model()
    frames, actions = random_clip(model, batch=2, frames=4)
    loss = model.loss(frames, actions, n_context=2, generator=torch.Generator().manual_seed(0))
    again = model.loss(frames, actions, n_context=2, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() == again.item()
    loss.backward()
    assert model.patch_in.weight.grad is not None and model.patch_in.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="n_context"):
        model.loss(frames, actions, n_context=4)
    fresh = DiTWorldModel(**TINY)  # adaLN-Zero: zero velocity, so the loss is E|eps - x0|^2
    torch.manual_seed(0)
    assert abs(fresh.loss(frames, actions).item() - 2.0) < 0.5


def test_loss_is_the_velocity_mse_against_noise_minus_x0_at_the_interpolated_frames():
    """On a model whose velocity is not 0 (a fresh adaLN-Zero DiT's is exactly 0, which a flipped target or a
    swapped interpolation would also fit): the loss by hand, x_sigma = (1 - sigma) x0 + sigma eps, v* = eps - x0,
    with the loss's own draws (sigma ~ logit-normal per frame, then the noise)."""
    model = make_model()
    frames, actions = random_clip(model, batch=2, frames=4)
    loss = model.loss(frames, actions, n_context=2, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    x0 = frames[:, 2:]
    sigma = torch.sigmoid(torch.randn(2, 2, generator=g))
    noise = torch.randn(x0.shape, generator=g)
    s = sigma[:, :, None, None, None]
    with torch.no_grad():
        v = model((1 - s) * x0 + s * noise, sigma, actions, clean=frames[:, :-1], frame_index=[2, 3])
    assert v.abs().mean() > 0.1
    expected = (v - (noise - x0)).pow(2).mean()
    torch.testing.assert_close(loss.detach(), expected, atol=1e-6, rtol=1e-5)


def test_patches_and_pixel_frames_round_trip():
    model = make_model(in_channels=3, frame_size=8, patch_size=4, frame_space="pixels")
    x = torch.randn(2, 3, 3, 8, 8)
    tokens = model.patchify(x)
    assert tokens.shape == (2, 3, 4, 48)
    torch.testing.assert_close(tokens[0, 0, 1], x[0, 0, :, :4, 4:].reshape(-1))  # patch 1 is the top right
    torch.testing.assert_close(model.unpatchify(tokens), x)
    frames = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    latents = model.encode_frames(frames)
    assert latents.shape == (2, 3, 8, 8) and float(latents.abs().max()) <= 1
    assert torch.equal(model.decode_frames(latents), frames)


def test_tokenizer_latent_frames():
    torch.manual_seed(0)
    tokenizer = VQTokenizer(hidden_channels=16, encoder_blocks=0, decoder_blocks=0, code_dim=4).eval()
    model = make_model(in_channels=4, frame_size=8, patch_size=2, latent_shift=0.1, latent_scale=2.0)
    frames = torch.randint(0, 256, (2, 5, 3, 64, 64), dtype=torch.uint8)
    latents = model.encode_frames(frames, tokenizer)
    assert latents.shape == (2, 5, 4, 8, 8)
    decoded = model.decode_frames(latents, tokenizer, batch=3)
    assert decoded.shape == frames.shape and decoded.dtype == torch.uint8
    direct = tokenizer.to_uint8(tokenizer._decode_latents(tokenizer._encode_latents(
        tokenizer._frames_to_input(frames)[0])).clamp(0, 1)).view_as(frames)
    assert (decoded.int() - direct.int()).abs().max() <= 1  # the shift/scale round trip only rounds
    with pytest.raises(ValueError, match="tokenizer is required"):
        model.encode_frames(frames)


def test_save_load_round_trip(tmp_path):
    model = make_model()
    frames, actions = random_clip(model, batch=2, frames=3)
    sigma = torch.rand(2, 2)
    model.save_pretrained(tmp_path)
    loaded = DiTWorldModel.from_pretrained(tmp_path).eval()
    assert loaded.config.action_head_sizes == [5, 3] and loaded.config.frame_space == "tokenizer_latents"
    with torch.no_grad():
        torch.testing.assert_close(teacher_forced(loaded, frames, actions, sigma),
                                   teacher_forced(model, frames, actions, sigma))


@pytest.mark.parametrize("overrides, key", [
    (dict(in_channels=0), "in_channels"),
    (dict(frame_size=5), "frame_size"),
    (dict(patch_size=0), "patch_size"),
    (dict(action_head_sizes=[]), "action_head_sizes"),
    (dict(action_head_sizes=[5, 1]), "action_head_sizes"),
    (dict(n_layers=0), "n_layers"),
    (dict(d_model=30), "d_model"),
    (dict(d_model=12, n_heads=4), "d_model / n_heads"),
    (dict(ffn_hidden=0), "ffn_hidden"),
    (dict(max_frames=1), "max_frames"),
    (dict(rope_theta=1.0), "rope_theta"),
    (dict(norm_eps=0.0), "norm_eps"),
    (dict(attn_backend="fast"), "attn_backend"),
    (dict(frame_space="voxels"), "frame_space"),
    (dict(frame_space="pixels"), "in_channels"),
    (dict(latent_scale=0.0), "latent_scale"),
    (dict(latent_shift=float("nan")), "latent_shift"),
    (dict(previous_frame_input=1), "previous_frame_input"),
])
def test_bad_config_raises_naming_the_key(overrides, key):
    with pytest.raises(ValueError, match=key):
        DiTWorldModel(**{**TINY, **overrides})


def test_bad_forward_inputs_raise():
    model = make_model()
    frames, actions = random_clip(model, batch=2, frames=3)
    with pytest.raises(ValueError, match="frame_index"):
        model(frames[:, 1:], torch.rand(2, 2), actions, clean=frames[:, :1], frame_index=[1, 2])
    with pytest.raises(ValueError, match="actions"):
        model(frames[:, 1:], torch.rand(2, 2), actions[..., :1], clean=frames[:, :2], frame_index=[1, 2])
    with pytest.raises(ValueError, match="head size"):
        model(frames[:, 1:], torch.rand(2, 2), actions + 5, clean=frames[:, :2], frame_index=[1, 2])
    with pytest.raises(ValueError, match="max_frames"):
        long, long_actions = random_clip(model, batch=1, frames=7)
        model(long[:, 1:], torch.rand(1, 6), long_actions, clean=long[:, :6], frame_index=range(1, 7))


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_attention_backends_agree_on_the_block_mask():
    model = make_model()
    frames, actions = random_clip(model, batch=2, frames=3)
    sigma = torch.rand(2, 2)
    backends = [b for b in ("sdpa", "flex") if b in available_backends()]
    with torch.no_grad():
        model.attn_backend = "math"
        expected = teacher_forced(model, frames, actions, sigma)
        for backend in backends:
            model.attn_backend = backend
            torch.testing.assert_close(teacher_forced(model, frames, actions, sigma), expected,
                                       atol=1e-5, rtol=1e-5, msg=backend)


def test_the_shipped_crafter_checkpoint_generates_with_its_tokenizer():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "checkpoints" / "crafter"
    if not (root / "dit_world_model" / "config.json").is_file():
        pytest.skip("no shipped diffusion world model")
    tokenizer = VQTokenizer.from_pretrained(root / "tokenizer").eval()
    model = DiTWorldModel.from_pretrained(root / "dit_world_model").eval()
    assert model.config.frame_space == "tokenizer_latents" and model.config.in_channels == tokenizer.config.code_dim
    assert model.frame_shape == tokenizer.code_grid and list(model.config.action_head_sizes) == [17]
    height, width = tokenizer.frame_size
    first = torch.randint(0, 256, (1, 1, 3, height, width), dtype=torch.uint8)
    sample = model.generate(model.encode_frames(first, tokenizer), torch.randint(0, 17, (1, 2, 1)), num_steps=2,
                            generator=torch.Generator().manual_seed(0))
    video = model.decode_frames(sample.frames, tokenizer)
    assert video.shape == (1, 2, 3, height, width) and video.dtype == torch.uint8
