import pytest
import torch

from rlir.models import filter_logits, generate, sample_tokens

G = 3


def _rollout(model, context, actions, context_actions, *, seed=0, **kwargs):
    kwargs = {"num_samples": G, "temperature": 0.9, **kwargs}
    return generate(model, context, actions, context_actions=context_actions,
                    generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("filters", [{}, {"top_k": 8, "top_p": 0.9}])
def test_cached_equals_uncached(make_model, random_clip, filters, conditioning):
    model = make_model(**conditioning)
    frames, actions = random_clip(model, batch=2, frames=5)
    context, context_actions, commanded = frames[:, :2].flatten(1), actions[:, :1], actions[:, 1:]
    tokens, logp = _rollout(model, context, commanded, context_actions, **filters)
    ref_tokens, ref_logp = _rollout(model, context, commanded, context_actions, use_cache=False, **filters)
    assert tokens.shape == logp.shape == (2 * G, 3, 4)
    assert tokens.dtype == torch.long and logp.dtype == torch.float32
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_recorded_logprobs_equal_teacher_forced(make_model, random_clip, temperature, conditioning):
    model = make_model(seed=1, n_kv_heads=1, **conditioning)
    frames, actions = random_clip(model, batch=2, frames=5, seed=1)
    context = frames[:, :2]
    tokens, logp = _rollout(model, context.flatten(1), actions[:, 1:], actions[:, :1], temperature=temperature)
    video = torch.cat((context.repeat_interleave(G, 0), tokens), dim=1)
    teacher = model.token_logprobs(video, actions.repeat_interleave(G, 0), temperature, n_context=2)
    assert (teacher - logp).abs().max() <= 1e-4


def test_samples_share_one_prefill(make_model, random_clip):
    """The prompt is encoded once per prompt (batch B); every later call is a G-wide decode chunk."""
    model = make_model()
    frames, actions = random_clip(model, batch=2, frames=4)
    calls = []
    forward_tokens = model.forward_tokens

    def recording(ids, cache=None, history=None):
        calls.append((tuple(ids.shape), cache is not None))
        return forward_tokens(ids, cache, history)

    model.forward_tokens = recording
    tokens, _ = _rollout(model, frames[:, 0], actions, None)
    stride, heads = model.frame_stride, model.num_action_heads
    assert calls[0] == ((2, stride), True)  # [f0][a0] once per prompt, not per sample
    assert all(shape[0] == 2 * G and shape[1] in (1, 1 + heads) and cached for shape, cached in calls[1:])
    assert len(calls) == 1 + tokens[0].numel() - 1  # one decode call per sampled code but the last
    # The G samples of a prompt diverge: they do not share one noise draw.
    assert not torch.equal(tokens[0], tokens[1])


def test_sample_tokens_distribution_and_filters():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(40000, 4)
    ids, logp = sample_tokens(logits, temperature=1.0, generator=torch.Generator().manual_seed(0))
    probs = logits[0].softmax(-1)
    torch.testing.assert_close(torch.bincount(ids, minlength=4) / ids.numel(), probs, atol=0.01, rtol=0)
    torch.testing.assert_close(logp, probs.log()[ids])
    hot, hot_logp = sample_tokens(logits[:5], temperature=0.5, top_k=1)
    assert hot.tolist() == [0] * 5  # top_k=1 is greedy; the log-prob stays the full tempered one
    torch.testing.assert_close(hot_logp, (logits[0] / 0.5).log_softmax(-1)[0].expand(5))
    kept = filter_logits(torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])), top_p=0.75)
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]
    kept = filter_logits(torch.tensor([[0.1, 3.0, 2.0, -1.0]]), top_k=2)
    assert torch.isfinite(kept).tolist() == [[False, True, True, False]]


def test_bad_arguments_name_the_key(make_model, random_clip):
    model = make_model()
    frames, actions = random_clip(model, batch=2, frames=4)
    context = frames[:, 0]
    for kwargs, key in [({"temperature": 0.0}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_p": 1.5}, "top_p"),
                        ({"num_samples": 0}, "num_samples")]:
        with pytest.raises(ValueError, match=key):
            generate(model, context, actions, **kwargs)
    with pytest.raises(ValueError, match="context_actions"):
        generate(model, frames[:, :2].flatten(1), actions[:, 1:])
    with pytest.raises(ValueError, match="context_actions"):
        generate(model, frames[:, :2].flatten(1), actions[:, 1:], context_actions=actions[:, :2])
    with pytest.raises(ValueError, match="max_frames"):
        generate(model, context, torch.zeros(2, 6, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="actions"):
        generate(model, context, actions + 5)
    with pytest.raises(ValueError, match="tokens_per_frame"):
        generate(model, context[:, :3], actions)
