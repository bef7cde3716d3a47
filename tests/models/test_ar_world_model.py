import json

import pytest
import torch

from rlir.models import ARWorldModel, available_backends
from rlir.models.ar_world_model import apply_rope


def test_sequence_layout(make_model):
    model = make_model()  # codebook 32, F=4, heads [5, 3]: head 0 ids 32..36, head 1 ids 37..39
    frames = torch.tensor([[[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]])
    actions = torch.tensor([[[4, 0], [1, 2]]])
    ids = model.sequence(frames, actions)
    assert ids.tolist() == [[0, 1, 2, 3, 36, 37, 4, 5, 6, 7, 33, 39, 8, 9, 10, 11]]
    assert model.vocab_size == 40 and model.frame_stride == 6
    # frame 1 code 0 is predicted at the last action token of a0 (position 5), code j at position 5 + j.
    assert model._predicting_positions(3, 1, "cpu").tolist() == [[5, 6, 7, 8], [11, 12, 13, 14]]


def test_shapes_gqa_and_cache_layout(make_model, random_clip):
    model = make_model(n_heads=4, n_kv_heads=1)
    frames, actions = random_clip(model, batch=3, frames=4)
    assert model(frames, actions).shape == (3, 3, 4, 32)
    assert model.hidden_states(frames, actions, first_frame=2).shape == (3, 2, 4, 64)
    logp = model.token_logprobs(frames, actions, temperature=0.7, n_context=2)
    assert logp.shape == (3, 2, 4) and logp.dtype == torch.float32 and bool((logp <= 0).all())
    block = model.layers[0]
    assert block.wqkv.out_features == (4 + 2 * 1) * 16
    cache = model.new_cache(batch=3)
    assert cache.k.shape == (2, 3, 1, model.max_len, 16)


def test_rope_is_relative_and_norm_preserving(make_model):
    model = make_model()
    cos, sin = model._rope_tables(0, model.max_len, "cpu")
    q, k = torch.randn(2, 1, 1, 16).unbind(0)

    def score(m, n):
        return (apply_rope(q, cos[m:m + 1], sin[m:m + 1]) * apply_rope(k, cos[n:n + 1], sin[n:n + 1])).sum()

    torch.testing.assert_close(score(7, 3), score(17, 13))
    torch.testing.assert_close(apply_rope(q, cos[9:10], sin[9:10]).norm(), q.norm())
    assert not torch.allclose(score(7, 3), score(3, 7))


def test_causality(make_model, random_clip, conditioning):
    model = make_model(**conditioning)
    frames, actions = random_clip(model, batch=2, frames=4)
    logits = model(frames, actions)
    later = frames.clone()
    later[:, 2, 1] = (later[:, 2, 1] + 1) % 32  # code 1 of frame 2
    changed = model(later, actions)
    torch.testing.assert_close(changed[:, :1], logits[:, :1])          # frame 1 cannot see frame 2
    torch.testing.assert_close(changed[:, 1, :2], logits[:, 1, :2])    # codes 0-1 of frame 2 cannot see code 1
    assert not torch.allclose(changed[:, 1, 2:], logits[:, 1, 2:])
    other = actions.clone()
    other[:, 2, 0] = (other[:, 2, 0] + 1) % 5  # action a2 conditions frame 3 only
    steered = model(frames, other)
    torch.testing.assert_close(steered[:, :2], logits[:, :2])
    assert not torch.allclose(steered[:, 2], logits[:, 2])


def test_kv_cache_chunks_match_full_forward(make_model, random_clip, conditioning):
    model = make_model(**conditioning)
    frames, actions = random_clip(model, batch=2, frames=3)
    ids = model.sequence(frames, actions)
    with torch.no_grad():
        full = model.forward_tokens(ids)
        cache = model.new_cache(batch=2, max_len=ids.shape[1])
        parts = [model.forward_tokens(ids[:, a:b], cache, ids) for a, b in ((0, 7), (7, 8), (8, 11), (11, 16))]
    assert cache.length == 16
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="overflow"):
        model.forward_tokens(ids[:, :1], cache, ids)


def test_frame_actions_follow_the_layout(make_model, random_clip):
    model = make_model(frame_action_embedding=True)
    frames, actions = random_clip(model, batch=2, frames=3)
    ids = model.sequence(frames, actions)
    got = model.frame_actions(ids)
    f, stride = model.config.tokens_per_frame, model.frame_stride
    assert (got[:, :stride] == -1).all()  # frame 0 and the action tokens after it
    for t in (1, 2):
        expected = model.action_token_ids(actions[:, t - 1])[:, None].expand(-1, f, -1)
        assert torch.equal(got[:, t * stride:t * stride + f], expected)
    assert (got[:, stride + f:2 * stride] == -1).all()
    cache = model.new_cache(batch=2, max_len=ids.shape[1])
    model.forward_tokens(ids[:, :5], cache)
    with pytest.raises(ValueError, match="history"):
        model.forward_tokens(ids[:, 5:6], cache)


def test_previous_frame_input_reads_the_neighbourhood(make_model, random_clip):
    """A position predicting code (r, c) of frame t reads frame t-1 at (r, c) and its 4 neighbours, and only those."""
    model = make_model(frame_grid=[2, 2], previous_frame_input=True)  # codes 0 1 / 2 3
    assert model.neighbour_index.tolist() == [[0, -1, 2, -1, 1], [1, -1, 3, 0, -1], [2, 0, -1, -1, 3],
                                              [3, 1, -1, 2, -1]]
    frames, actions = random_clip(model, batch=1, frames=3)
    moved = frames.clone()
    moved[:, 1, 3] = (moved[:, 1, 3] + 1) % 32  # code 3 of frame 1: a neighbour of codes 1, 2 and 3, not of 0
    ids, moved_ids = model.sequence(frames, actions), model.sequence(moved, actions)
    positions = torch.arange(ids.shape[1])
    with torch.no_grad():
        changed = (model._conditioning(ids, positions) != model._conditioning(moved_ids, positions)).any(-1)[0]
    # Positions 11..14 predict codes 0..3 of frame 2 (code 0 from the last action token of a1).
    assert changed.nonzero().flatten().tolist() == [12, 13, 14]
    with pytest.raises(ValueError, match="frame_grid"):
        make_model(previous_frame_input=True)
    with pytest.raises(ValueError, match="frame_grid"):
        make_model(frame_grid=[3, 2])


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_backends_agree_inside_the_model(make_model, random_clip):
    frames, actions = random_clip(make_model(), batch=2, frames=3)
    with torch.no_grad():
        ref = make_model(attn_backend="math")(frames, actions)
        for backend in {"sdpa", "flex"} & set(available_backends()):
            out = make_model(attn_backend=backend)(frames, actions)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_token_logprobs_backward(make_model, random_clip):
    model = make_model().train()
    frames, actions = random_clip(model, batch=2, frames=3)
    model.token_logprobs(frames, actions, temperature=0.8).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.output.weight.grad.abs().sum() > 0


def test_save_load_round_trip(make_model, random_clip, tmp_path):
    model = make_model(seed=3)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "ARWorldModel" and config["action_head_sizes"] == [5, 3]
    loaded = ARWorldModel.from_pretrained(tmp_path).eval()
    frames, actions = random_clip(model, batch=2, frames=3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(frames, actions), model(frames, actions), atol=0, rtol=0)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = model.generate(frames[:, 0], actions[:, :1], num_samples=2, generator=g1)
    b = loaded.generate(frames[:, 0], actions[:, :1], num_samples=2, generator=g2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("key, value", [
    ("codebook_size", 0), ("tokens_per_frame", -1), ("n_layers", 0), ("d_model", 1.5), ("n_heads", 3),
    ("n_kv_heads", 3), ("max_frames", 1), ("ffn_hidden", 0), ("rope_theta", 0.5), ("norm_eps", 0.0),
    ("attn_backend", "nope"), ("action_head_sizes", []), ("action_head_sizes", [17, 1]),
])
def test_bad_config_names_the_key(make_model, key, value):
    with pytest.raises(ValueError, match=key):
        make_model(**{key: value})


def test_bad_clips_raise(make_model, random_clip):
    model = make_model()
    frames, actions = random_clip(model, batch=2, frames=3)
    with pytest.raises(ValueError, match="tokens_per_frame"):
        model(frames[..., :3], actions)
    with pytest.raises(ValueError, match="codebook_size"):
        model(frames + 32, actions)
    with pytest.raises(ValueError, match="head size"):
        model(frames, actions + 5)
    with pytest.raises(ValueError, match=r"T-1"):
        model(frames, actions[:, :1])
    with pytest.raises(ValueError, match="integer"):
        model(frames.float(), actions)
    with pytest.raises(ValueError, match="max_frames"):
        model(*random_clip(model, batch=1, frames=7))
    with pytest.raises(ValueError, match="first_frame"):
        model.token_logprobs(frames, actions, n_context=3)
