import pytest
import torch
import torch.nn.functional as F

from rlir.envs import get_action_space
from rlir.kernels import idm_reward
from rlir.models.idm import InverseDynamicsModel

TINY = dict(frame_size=[16, 16], window=6, width=32, depth=1, heads=2, channels=[4, 8])


def make_idm(head_sizes=(17,), seed=0, **overrides) -> InverseDynamicsModel:
    torch.manual_seed(seed)
    return InverseDynamicsModel(head_sizes=list(head_sizes), **{**TINY, **overrides}).eval()


def video(batch=2, frames=6, size=16, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, frames, 3, size, size), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("env", ["crafter", "minecraft"])
def test_forward_gives_one_logits_tensor_per_head_aligned_with_the_actions(env):
    sizes = get_action_space(env).head_sizes
    model = make_idm(sizes)
    frames = video(batch=3, frames=5)
    with torch.no_grad():
        logits = model(frames)
    assert [tuple(lg.shape) for lg in logits] == [(3, 4, c) for c in sizes]
    actions = torch.stack([torch.randint(0, c, (3, 4)) for c in sizes], dim=-1)
    assert idm_reward(logits, actions, torch.ones(3, 4, dtype=torch.bool)).reward.shape == (3,)
    predicted = model.predict(frames)
    assert predicted.shape == (3, 4, len(sizes)) and predicted.dtype == torch.int64


def test_uint8_and_float_frames_give_the_same_logits():
    model, frames = make_idm(), video()
    with torch.no_grad():
        torch.testing.assert_close(model(frames)[0], model(frames.float() / 255)[0])


def test_a_later_frame_can_change_an_earlier_prediction():
    model, frames = make_idm(), video()
    changed = frames.clone()
    changed[:, -1] = 255 - changed[:, -1]
    with torch.no_grad():
        assert not torch.allclose(model(frames)[0][:, 0], model(changed)[0][:, 0])


@pytest.mark.parametrize("k", [0, 2, 5])
def test_transition_t_is_encoded_from_frames_t_minus_1_and_t(k):
    # Without transformer blocks nothing mixes transitions: changing frame k changes exactly the
    # transitions that read it, k-1 -> k (output k-1) and k -> k+1 (output k).
    model, frames = make_idm(depth=0), video(frames=6)
    changed = frames.clone()
    changed[:, k] = 255 - changed[:, k]
    with torch.no_grad():
        moved = (model(frames)[0] - model(changed)[0]).abs().amax(dim=(0, 2)) > 1e-6
    assert moved.tolist() == [t in (k - 1, k) for t in range(5)]


def test_swapping_two_frames_changes_the_prediction():
    # The direction of a transition matters (scrolling left vs right), so the encoder must not be symmetric.
    model, frames = make_idm(depth=0), video(frames=2)
    with torch.no_grad():
        assert not torch.allclose(model(frames)[0], model(frames.flip(1))[0])


def test_long_videos_are_read_in_windows():
    model = make_idm()  # window 6: 5 transitions at a time
    frames = video(batch=2, frames=13)  # 12 transitions: windows [0, 5), [5, 10), then the last one [7, 12)
    with torch.no_grad():
        full = model(frames)[0]
        assert full.shape == (2, 12, 17)
        torch.testing.assert_close(full[:, :5], model(frames[:, :6])[0])
        torch.testing.assert_close(full[:, 5:7], model(frames[:, 5:11])[0][:, :2])
        torch.testing.assert_close(full[:, 7:], model(frames[:, 7:])[0])


def test_save_and_load_round_trip(tmp_path):
    model, frames = make_idm([3, 3, 2], seed=3), video()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    loaded = InverseDynamicsModel.from_pretrained(tmp_path).eval()
    assert loaded.config.head_sizes == [3, 3, 2] and loaded.config.width == 32
    with torch.no_grad():
        for a, b in zip(model(frames), loaded(frames)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bf16_checkpoint_is_half_the_size_and_loads(tmp_path):
    model, frames = make_idm(), video()
    model.save_pretrained(tmp_path / "fp32")
    model.bfloat16().save_pretrained(tmp_path / "bf16")
    size = {d: (tmp_path / d / "diffusion_pytorch_model.safetensors").stat().st_size for d in ("fp32", "bf16")}
    assert size["bf16"] < 0.55 * size["fp32"]
    loaded = InverseDynamicsModel.from_pretrained(tmp_path / "bf16", torch_dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(frames)[0], model.float()(frames)[0], rtol=0, atol=0)


@pytest.mark.parametrize("config, message", [
    (dict(head_sizes=[]), "head_sizes"),
    (dict(head_sizes=[17, 1]), "head_sizes"),
    (dict(width=30, heads=4), "divisible by heads"),
    (dict(window=1), "window"),
    (dict(frame_size=[8, 16], channels=[4, 4, 4, 4]), "frame_size"),
    (dict(frame_size=[16, 16, 3]), "frame_size"),
    (dict(channels=[]), "channels"),
])
def test_bad_config_raises(config, message):
    with pytest.raises(ValueError, match=message):
        InverseDynamicsModel(**{**TINY, "head_sizes": [17], **config})


def test_frames_of_any_size_are_resized_to_the_input_size():
    """A world model at another size (the paper: 224x384 MineWorld frames, a 128x128 VPT IDM) is scored as is."""
    idm = make_idm().eval()
    frames = torch.randint(0, 256, (2, 4, 3, 24, 40), dtype=torch.uint8)
    resized = F.interpolate(frames.flatten(0, 1).float() / 255, size=(16, 16), mode="bilinear", antialias=True,
                            align_corners=False).view(2, 4, 3, 16, 16)
    with torch.no_grad():
        for got, expected in zip(idm(frames), idm(resized)):
            torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("frames, message", [
    (torch.zeros(2, 1, 3, 16, 16, dtype=torch.uint8), "at least 2 frames"),
    (torch.zeros(2, 4, 16, 16, dtype=torch.uint8), r"\[N, T\+1, 3, H, W\]"),
    (torch.zeros(2, 4, 3, 16, 16, dtype=torch.int32), "uint8"),
])
def test_bad_frames_raise(frames, message):
    with pytest.raises(ValueError, match=message):
        make_idm()(frames)
