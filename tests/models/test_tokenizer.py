import re

import pytest
import torch

from rlir.models.tokenizer import VectorQuantizer, VQTokenizer

TINY = dict(hidden_channels=16, encoder_blocks=1, decoder_blocks=1, code_dim=8, codebook_size=32)


def make_tokenizer(seed: int = 0, **overrides) -> VQTokenizer:
    torch.manual_seed(seed)
    return VQTokenizer(**{**TINY, **overrides}).eval()


def random_frames(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (*shape, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("leading", [(), (5,), (2, 3)], ids=["frame", "batch", "video"])
def test_encode_decode_shapes_and_code_range(leading):
    tokenizer = make_tokenizer()
    frames = random_frames(*leading)
    codes = tokenizer.encode(frames)
    assert codes.shape == (*leading, 8, 8) and codes.dtype == torch.int64
    assert codes.min() >= 0 and codes.max() < tokenizer.codebook_size
    decoded = tokenizer.decode(codes)
    assert decoded.shape == (*leading, 3, 64, 64) and decoded.is_floating_point()
    assert decoded.min() >= 0 and decoded.max() <= 1
    assert tokenizer.to_uint8(decoded).dtype == torch.uint8
    assert tokenizer.tokens_per_frame == 64 and tokenizer.code_grid == (8, 8)


def test_uint8_and_float_frames_give_the_same_codes():
    tokenizer = make_tokenizer()
    frames = random_frames(4)
    assert torch.equal(tokenizer.encode(frames), tokenizer.encode(frames.float() / 255))


def test_forward_returns_reconstruction_loss_and_the_codes_of_encode():
    tokenizer = make_tokenizer()
    frames = random_frames(2, 3)
    recon, vq_loss, codes = tokenizer(frames)
    assert recon.shape == frames.shape and vq_loss.ndim == 0 and vq_loss >= 0
    assert torch.equal(codes, tokenizer.encode(frames))


def test_the_straight_through_gradient_reaches_the_encoder():
    tokenizer = make_tokenizer().train()
    recon, vq_loss, _ = tokenizer(random_frames(4))
    recon.square().mean().backward()  # the reconstruction alone: its gradient must pass the quantiser
    for name in ("encoder_in.weight", "encoder_position"):
        gradient = dict(tokenizer.named_parameters())[name].grad
        assert gradient is not None and gradient.abs().sum() > 0, name


def codes_used_on_toy_clusters(dead_code_patience: int) -> tuple[int, VectorQuantizer]:
    """Train a 64-code quantiser on 32 well-separated clusters after initialising it inside one of them;
    return how many distinct codes the 32 cluster centres then map to."""
    torch.manual_seed(0)
    centers = torch.randn(32, 4) * 10
    quantizer = VectorQuantizer(codebook_size=64, dim=4, decay=0.8, dead_code_patience=dead_code_patience).train()
    quantizer(centers[:1] + 0.01 * torch.randn(256, 4))  # the first call initialises from this one-cluster batch
    for _ in range(100):
        quantizer(centers[torch.randint(32, (512,))] + 0.01 * torch.randn(512, 4))
    return len(quantizer.eval().nearest(centers).unique()), quantizer


def test_dead_codes_are_restarted_so_the_codebook_gets_used():
    used, quantizer = codes_used_on_toy_clusters(dead_code_patience=5)
    assert quantizer.restarts > 64 and used == 32  # every cluster has a code of its own
    used_without_restarts, _ = codes_used_on_toy_clusters(dead_code_patience=10**9)
    assert used_without_restarts < 16


def test_save_and_load_round_trip_gives_identical_codes(tmp_path):
    tokenizer = make_tokenizer()
    tokenizer.train()(random_frames(8))  # initialise the codebook from data, as training does
    tokenizer.eval().save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and list(tmp_path.glob("*.safetensors"))
    loaded = VQTokenizer.from_pretrained(tmp_path).eval()
    frames = random_frames(3, seed=1)
    assert torch.equal(loaded.encode(frames), tokenizer.encode(frames))
    assert torch.equal(loaded.decode(loaded.encode(frames)), tokenizer.decode(tokenizer.encode(frames)))
    assert loaded.config.codebook_size == TINY["codebook_size"]


def test_bf16_checkpoint_is_smaller_and_loads_back_to_fp32(tmp_path):
    tokenizer = make_tokenizer()
    tokenizer.save_pretrained(tmp_path / "fp32")
    tokenizer.bfloat16().save_pretrained(tmp_path / "bf16")
    sizes = {d: next((tmp_path / d).glob("*.safetensors")).stat().st_size for d in ("fp32", "bf16")}
    assert sizes["bf16"] < 0.6 * sizes["fp32"]
    loaded = VQTokenizer.from_pretrained(tmp_path / "bf16", torch_dtype=torch.float32)
    assert loaded.dtype == torch.float32 and loaded.quantizer.initialized.dtype == torch.bool
    assert loaded.encode(random_frames(1)).shape == (1, 8, 8)


@pytest.mark.parametrize("config, message", [
    (dict(image_size=60), "image_size [60, 60] must be a multiple of patch_size (8)"),
    (dict(codebook_size=0), "codebook_size must be an int >= 1"),
    (dict(hidden_channels=20), "hidden_channels must be a multiple of 8"),
    (dict(ema_decay=1.0), "ema_decay must be a number in [0, 1)"),
])
def test_bad_config_raises(config, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        VQTokenizer(**{**TINY, **config})


def test_bad_inputs_raise():
    tokenizer = make_tokenizer()
    with pytest.raises(ValueError, match=r"frames must be a tensor of shape \[..., 3, 64, 64\]"):
        tokenizer.encode(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="frames must be uint8"):
        tokenizer.encode(torch.zeros(2, 3, 64, 64, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"codes must be an integer tensor of shape \[..., 8, 8\]"):
        tokenizer.decode(torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match=r"codes must be in \[0, 32\)"):
        tokenizer.decode(torch.full((2, 8, 8), 32))
