"""Cases that kill mutants of kernels/grpo_loss.py which the main kernel tests let through (docs/mutation.md):
``grpo_loss_from_logits`` passes every option through to ``grpo_loss`` (and uses temperature 1 by default),
checks its own arguments, and ignores the ids at masked positions even with a one-entry vocabulary; the
reference computes in fp32 whatever the input dtype and has beta 0 by default; a bool or complex normaliser
is refused."""
import pytest
import torch

from rlir.kernels import grpo_loss, grpo_loss_from_logits, token_logprobs
from rlir.kernels.grpo_loss import grpo_loss_reference

OPTIONS = dict(eps_low=0.1, eps_high=0.3, delta=1.5, beta=0.04, loss_agg="seq-mean-token-mean", normaliser=7.0)


def _batch(vocab=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, t = 4, 6
    logits = torch.randn(n, t, vocab, generator=g)
    ids = torch.randint(0, vocab, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.bool)
    mask[1, 4:] = False
    mask[3, 2:] = False
    ids[~mask] = -100  # padding ids at masked positions
    logp = token_logprobs(logits, ids.masked_fill(~mask, 0))
    # Old log-probs far enough from the current ones that the ratio is clipped on both sides and capped by delta.
    old = logp + torch.randn(n, t, generator=g).clamp(-2, 2)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    ref = logp + 0.3 * torch.randn(n, t, generator=g)
    return logits, ids, mask, old, adv, ref


@pytest.mark.parametrize("temperature", [None, 0.7])
def test_from_logits_is_token_logprobs_then_grpo_loss_with_every_option(backend, temperature):
    logits, ids, mask, old, adv, ref = _batch()
    kwargs = {} if temperature is None else {"temperature": temperature}
    z = logits.clone().requires_grad_()
    loss, metrics, clip = grpo_loss_from_logits(z, ids, old, adv, mask, ref, return_clip=True, **kwargs, **OPTIONS)
    (grad,) = torch.autograd.grad(loss, z)

    z2 = logits.clone().requires_grad_()
    logp = token_logprobs(z2, ids.masked_fill(~mask, 0), temperature or 1.0)
    want, want_metrics, want_clip = grpo_loss(logp, old, adv, mask, ref, return_clip=True, **OPTIONS)
    (want_grad,) = torch.autograd.grad(want, z2)
    assert (want_clip == 1).any() and (want_clip == -1).any() and want_metrics["kl"] > 0
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(grad, want_grad)
    assert torch.equal(clip, want_clip)
    for key, value in want_metrics.items():
        torch.testing.assert_close(metrics[key], value)


def test_from_logits_with_a_one_entry_vocabulary_ignores_masked_ids(backend):
    logits, ids, mask, old, adv, _ = _batch(vocab=1)
    loss, metrics = grpo_loss_from_logits(logits, ids, old, adv, mask)
    want, _ = grpo_loss(torch.zeros(4, 6), old, adv, mask)
    torch.testing.assert_close(loss, want)


def _args(**override):
    logits, ids, mask, old, adv, ref = _batch()
    args = dict(logits=logits, ids=ids, old_logp=old, advantages=adv, mask=mask)
    args.update(override)
    return args


BAD_INPUTS = [
    (dict(logits=torch.zeros(4, 6, 11, dtype=torch.long)), r"^logits must have dtype in"),
    (dict(logits=torch.zeros(4, 6)), r"^logits must have 3 dims"),
    (dict(ids=torch.zeros(4, 6, 1, dtype=torch.long)), r"^ids must have 2 dims"),
    (dict(ids=torch.zeros(4, 6)), r"^ids must have dtype in"),
    (dict(ids=torch.zeros(4, 5, dtype=torch.long)), r"^ids must have shape \(4, 6\), got \(4, 5\)$"),
]


@pytest.mark.parametrize("override,message", BAD_INPUTS)
def test_from_logits_errors_name_the_argument(backend, override, message):
    with pytest.raises(ValueError, match=message):
        grpo_loss_from_logits(**_args(**override))


@pytest.mark.parametrize("normaliser,message", [
    (torch.tensor(True), r"^normaliser must be a number or a one-element real tensor"),
    (torch.tensor(2 + 0j), r"^normaliser must be a number or a one-element real tensor"),
    (-1.0, r"^normaliser must be > 0, got -1.0$"),
])
def test_bad_normaliser(backend, normaliser, message):
    logits, ids, mask, old, adv, _ = _batch()
    with pytest.raises(ValueError, match=message):
        grpo_loss(torch.zeros(4, 6), old, adv, mask, normaliser=normaliser)


def test_reference_computes_in_fp32_and_has_beta_zero_by_default():
    _, _, mask, old, adv, ref = _batch()
    logp = (old - 0.5 * torch.rand(4, 6, generator=torch.Generator().manual_seed(3))).bfloat16()
    loss, metrics = grpo_loss_reference(logp, old.bfloat16(), adv, mask, ref)
    want, want_metrics = grpo_loss_reference(logp.float(), old.bfloat16().float(), adv, mask, ref, beta=0.0)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(metrics["kl"], want_metrics["kl"], rtol=1e-6, atol=1e-7)
    assert want_metrics["kl"] > 0  # ref is given: only beta decides whether the KL is in the loss


def test_reference_reads_bf16_reference_logprobs_in_fp32():
    _, _, mask, old, adv, ref = _batch()
    logp = old - 0.1
    loss, metrics = grpo_loss_reference(logp, old, adv, mask, ref.bfloat16(), beta=0.04)
    want, want_metrics = grpo_loss_reference(logp, old, adv, mask, ref.bfloat16().float(), beta=0.04)
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(metrics["kl"], want_metrics["kl"], rtol=1e-6, atol=1e-7)


def test_reference_with_beta_zero_leaves_an_overflowing_kl_out_of_the_loss():
    # exp(ref - logp) overflows to inf: with beta = 0 the KL must not enter the loss at all (0 * inf is NaN).
    # The Triton kernel adds beta * kl whenever ref_logp is given, so it returns NaN here (docs/mutation.md).
    _, _, mask, old, adv, _ = _batch()
    loss, metrics = grpo_loss_reference(old - 0.1, old, adv, mask, old + 1000.0, beta=0.0)
    assert torch.isfinite(loss) and metrics["kl"] == float("inf")


def test_a_zero_advantage_is_never_counted_as_clipped(backend):
    logp = torch.full((2, 3), -2.0)
    old = torch.zeros(2, 3)  # ratio exp(-2) < 1 - eps_low, and exp(2) > 1 + eps_high with the roles swapped
    for lp, ol in ((logp, old), (old, logp)):
        _, metrics = grpo_loss(lp, ol, torch.zeros(2))
        assert metrics["clip_frac_low"] == 0 and metrics["clip_frac_high"] == 0 and metrics["clip_frac"] == 0
    _, metrics = grpo_loss(logp, old, torch.tensor([-1.0, 0.0]))
    assert metrics["clip_frac_low"] == 0.5


def test_beta_zero_ignores_a_far_reference(backend):
    """With beta 0 the KL term is skipped, as in the reference: a reference 100 nats above the policy (exp
    overflows to inf) must not turn the loss or the gradient into NaN through 0 * inf."""
    _, _, mask, old, adv, _ = _batch()
    logp = old.clone().requires_grad_()
    ref = old + 100.0
    loss, _ = grpo_loss(logp, old, adv, mask, ref, beta=0.0)
    (grad,) = torch.autograd.grad(loss, logp)
    expected, _ = grpo_loss_reference(old, old, adv, mask, ref, beta=0.0)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    torch.testing.assert_close(loss, expected)


# ---- the loss normaliser and token aggregation (kernels.grpo_loss.loss_normaliser / aggregate_tokens) ----------

def test_loss_normaliser_counts_a_0_1_mask_as_the_bool_one_and_returns_fp32():
    from rlir.kernels.grpo_loss import loss_normaliser

    _, _, mask, _, _, _ = _batch()
    for agg, expected in (("token-mean", 18.0), ("seq-mean-token-mean", 4.0), ("seq-sum-norm", 24.0)):
        for m in (mask, mask.float(), mask.long()):
            got = loss_normaliser(m, agg)
            assert got.dtype == torch.float32 and got.item() == expected, (agg, m.dtype)


def test_loss_normaliser_and_aggregate_tokens_name_their_bad_arguments():
    from rlir.kernels.grpo_loss import aggregate_tokens, loss_normaliser

    _, _, mask, _, _, _ = _batch()
    with pytest.raises(ValueError, match=r"^loss_agg must be one of \['token-mean', "):
        loss_normaliser(mask, "mean")
    with pytest.raises(ValueError, match=r"^mask must have 2 dims, got shape \(4, 6, 1\)$"):
        loss_normaliser(mask[..., None], "token-mean")
    with pytest.raises(ValueError, match=r"^loss_agg must be one of \['token-mean', "):
        aggregate_tokens(torch.ones(4, 6), mask, "mean")


def test_aggregate_tokens_defaults_to_the_token_mean():
    from rlir.kernels.grpo_loss import aggregate_tokens

    _, _, mask, _, _, ref = _batch()
    got = aggregate_tokens(ref, mask)
    torch.testing.assert_close(got, ref[mask].mean())
    torch.testing.assert_close(got, aggregate_tokens(ref, mask, "token-mean"))


def test_grpo_loss_names_a_bad_logp_and_returns_the_gradient_in_logp_s_dtype(backend):
    _, _, mask, old, adv, _ = _batch()
    with pytest.raises(ValueError, match=r"^logp must have 2 dims"):
        grpo_loss(old[0], old, adv, mask)
    logp = old.to(torch.bfloat16).requires_grad_()
    loss, _ = grpo_loss(logp, old, adv, mask)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad.dtype == torch.bfloat16


def _bad_args():
    _, _, mask, old, adv, ref = _batch()
    yield {"old_logp": old[0]}, r"old_logp must have 2 dims, got shape \(6,\)"
    yield {"old_logp": old[:, :5]}, r"old_logp must have shape \(4, 6\), got \(4, 5\)"
    yield {"advantages": adv[:, None, None]}, r"advantages must have 1 or 2 dims, got shape \(4, 1, 1\)"
    yield {"advantages": adv[:3]}, r"advantages must have shape \(4,\), got \(3,\)"
    yield ({"advantages": adv[:, None].expand(4, 6).contiguous(), "is_level": "sequence"},
           r"advantages must be \[N\] \(one per sequence\) with is_level='sequence': a sequence-level ratio has one "
           r"importance weight per sequence, so per-token advantages do not apply")
    yield {"ref_logp": ref[0]}, r"ref_logp must have 2 dims, got shape \(6,\)"
    yield {"ref_logp": ref.long()}, r"ref_logp must have dtype in \["
    yield {"ref_logp": ref[:, :5]}, r"ref_logp must have shape \(4, 6\), got \(4, 5\)"
    yield {"eps_low": -0.1}, r"eps_low must be >= 0, got -0.1"
    yield {"eps_high": -0.1}, r"eps_high must be >= 0, got -0.1"
    yield {"delta": -2.0}, r"delta must be > 0, got -2.0"
    yield {"beta": -1.0}, r"beta must be >= 0, got -1.0"
    yield {"loss_agg": "mean"}, r"loss_agg must be one of \["
    yield {"is_level": "row"}, r"is_level must be one of \["
    yield {"beta": 0.1, "ref_logp": None}, (r"ref_logp is required when beta > 0 \(the KL penalty needs reference "
                                            r"log-probs\)")


@pytest.mark.parametrize("change,message", list(_bad_args()))
def test_grpo_loss_names_each_bad_argument(change, message):
    _, _, mask, old, adv, ref = _batch()
    args = {"old_logp": old, "advantages": adv, "ref_logp": ref, **change}
    logp = old.clone()
    with pytest.raises(ValueError, match="^" + message):
        grpo_loss(logp, args.pop("old_logp"), args.pop("advantages"), mask, args.pop("ref_logp"), **args)
