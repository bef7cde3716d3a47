"""grpo_loss / grpo_loss_from_logits: both backends against the float64 reference and against TRL's and
verl's published loss definitions, written out below as explicit expressions."""
import importlib
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlir.kernels.grpo_loss import (
    IS_LEVELS,
    LOSS_AGGS,
    METRICS,
    grpo_loss,
    grpo_loss_from_logits,
    grpo_loss_reference,
    loss_normaliser,
)
from rlir.kernels.token_logprobs import token_logprobs, token_logprobs_reference

# rlir.kernels re-exports functions under their modules' names, so fetch the modules themselves.
grpo_module = importlib.import_module("rlir.kernels.grpo_loss")
tlp_module = importlib.import_module("rlir.kernels.token_logprobs")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Everything is computed in fp32 from identically rounded inputs, so values match tightly for every input
# dtype; d loss / d logp is returned in logp's dtype, so its tolerance is that dtype's rounding.
VALUE_TOL = dict(rtol=1e-5, atol=1e-6)
GRAD_TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-8),
    torch.float16: dict(rtol=2e-3, atol=1e-7),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-6),
}


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    # Small chunks so rows of T=13 run the per-row loops over several chunks plus a masked tail.
    monkeypatch.setattr(grpo_module, "MAX_BLOCK_T", 8)
    monkeypatch.setattr(tlp_module, "MAX_BLOCK_V", 64)


@pytest.fixture
def gen(request):
    """A generator seeded from the test id: every parametrized case draws its own fresh inputs."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def make_batch(gen, N=6, T=13, dtype=torch.float32, *, empty_row=True, garbage=True):
    """Inputs rounded to ``dtype`` (mask is bool). Rows get their own log-ratio offset so that sequence-level
    ratios leave the clip range too; advantages of both signs; one full row and (optionally) one empty row;
    padded positions hold garbage (huge / inf / nan) that must never reach the loss, metrics or gradients."""
    f64 = dict(generator=gen, dtype=torch.float64)
    logp = -torch.rand(N, T, **f64) * 4 - 0.05
    # Rows alternate A > 0 / A < 0; this offset pattern gives each sign both a ratio near 2 and near 0.5.
    pattern = torch.tensor([-1.0, 1.0, 1.0, -1.0, 0.0], dtype=torch.float64).repeat(N // 5 + 1)[:N]
    row_offset = 0.7 * pattern + 0.1 * torch.randn(N, **f64)
    old = logp + row_offset[:, None] + 0.5 * torch.randn(N, T, **f64)
    ref = logp + 0.3 * torch.randn(N, T, **f64)
    adv = torch.randn(N, **f64).abs() + 0.1
    adv[1::2] *= -1
    lengths = torch.randint(1, T + 1, (N,), generator=gen)
    lengths[0] = T
    if empty_row and N > 1:
        lengths[-1] = 0
    mask = torch.arange(T)[None, :] < lengths[:, None]
    if garbage:
        logp = logp.masked_fill(~mask, 1e4)
        old = old.masked_fill(~mask, float("inf"))
        ref = ref.masked_fill(~mask, float("nan"))
    return logp.to(dtype), old.to(dtype), ref.to(dtype), adv.to(dtype), mask


def run_public(fn, logp, *args, **kwargs):
    """Run the public op on a fresh leaf copy of logp; returns (loss, metrics, d loss / d logp)."""
    x = logp.clone().requires_grad_()
    loss, metrics = fn(x, *args, **kwargs)
    loss.backward()
    return loss, metrics, x.grad


def run_reference64(logp, old, adv, mask, ref, **kwargs):
    """float64 ground truth on the same rounded inputs."""
    x = logp.double().requires_grad_()
    loss, metrics = grpo_loss_reference(x, None if old is None else old.double(), adv.double(), mask,
                                        None if ref is None else ref.double(), **kwargs)
    loss.backward()
    return loss, metrics, x.grad


def assert_matches(got, expected, dtype=torch.float32):
    loss, metrics, grad = got
    e_loss, e_metrics, e_grad = expected
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert set(metrics) == set(METRICS)
    torch.testing.assert_close(loss.double(), e_loss, **VALUE_TOL)
    for k in METRICS:
        assert metrics[k].dtype == torch.float32 and metrics[k].shape == () and not metrics[k].requires_grad
        torch.testing.assert_close(metrics[k].double(), e_metrics[k], **VALUE_TOL, msg=k)
    assert grad.dtype == dtype
    torch.testing.assert_close(grad.double(), e_grad, **GRAD_TOL[dtype])


KL_CASES = {"no-ref": (False, 0.0), "ref-beta0": (True, 0.0), "ref-beta0.1": (True, 0.1)}


@pytest.mark.parametrize("kl", list(KL_CASES))
@pytest.mark.parametrize("delta", [None, 1.5])
@pytest.mark.parametrize("is_level", IS_LEVELS)
@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
def test_matches_float64_reference(backend, gen, loss_agg, is_level, delta, kl):
    has_ref, beta = KL_CASES[kl]
    logp, old, ref, adv, mask = make_batch(gen)
    ref = ref if has_ref else None
    opts = dict(eps_low=0.2, eps_high=0.28, delta=delta, beta=beta, loss_agg=loss_agg, is_level=is_level)
    assert_matches(run_public(grpo_loss, logp, old, adv, mask, ref, **opts),
                   run_reference64(logp, old, adv, mask, ref, **opts))


@pytest.mark.parametrize("delta", [None, 1.5])
@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
def test_per_token_advantages_match_float64_reference(backend, gen, loss_agg, delta):
    """Advantages [N, T] (per-frame credit): signs vary along a row; padded positions hold NaN."""
    logp, old, ref, _, mask = make_batch(gen)
    adv = torch.randn(mask.shape, generator=gen, dtype=torch.float64).masked_fill(~mask, float("nan")).float()
    opts = dict(eps_low=0.2, eps_high=0.28, delta=delta, beta=0.1, loss_agg=loss_agg)
    got = run_public(grpo_loss, logp, old, adv, mask, ref, **opts)
    assert_matches(got, run_reference64(logp, old, adv, mask, ref, **opts))
    assert got[1]["clip_frac_low"] > 0 and got[1]["clip_frac_high"] > 0


def test_per_token_advantages_reject_sequence_level_ratio(backend, gen):
    logp, old, _, adv, mask = make_batch(gen)
    with pytest.raises(ValueError, match="advantages.*is_level"):
        grpo_loss(logp, old, adv[:, None].expand(mask.shape), mask, is_level="sequence")


def test_per_token_advantages_constant_along_rows_equal_per_row(backend, gen):
    logp, old, ref, adv, mask = make_batch(gen, garbage=False)
    opts = dict(eps_low=0.2, eps_high=0.28, beta=0.1)
    row = run_public(grpo_loss, logp, old, adv, mask, ref, **opts)
    token = run_public(grpo_loss, logp, old, adv[:, None].expand(mask.shape).contiguous(), mask, ref, **opts)
    torch.testing.assert_close(token[0], row[0])
    torch.testing.assert_close(token[2], row[2])
    for k in METRICS:
        torch.testing.assert_close(token[1][k], row[1][k], msg=k)


def test_batch_exercises_every_branch(gen):
    """Guard on make_batch: the data above do clip low and high and do hit the delta cap."""
    logp, old, ref, adv, mask = make_batch(gen)
    for is_level in IS_LEVELS:
        _, m = grpo_loss_reference(logp, old, adv, mask, is_level=is_level)
        assert m["clip_frac_low"] > 0 and m["clip_frac_high"] > 0 and m["clip_frac"] < 1
    loss_plain, _ = grpo_loss_reference(logp, old, adv, mask)
    loss_delta, _ = grpo_loss_reference(logp, old, adv, mask, delta=1.5)
    assert loss_plain != loss_delta


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("loss_agg, is_level, beta", [("token-mean", "token", 0.0),
                                                      ("seq-mean-token-mean", "sequence", 0.05)])
def test_input_dtypes(backend, gen, dtype, loss_agg, is_level, beta):
    logp, old, ref, adv, mask = make_batch(gen, dtype=dtype)
    opts = dict(delta=2.0, beta=beta, loss_agg=loss_agg, is_level=is_level)
    assert_matches(run_public(grpo_loss, logp, old, adv, mask, ref, **opts),
                   run_reference64(logp, old, adv, mask, ref, **opts), dtype)


@pytest.mark.parametrize("N, T, with_mask", [(1, 1, False), (1, 20, True), (5, 1, True), (3, 8, False)])
@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
def test_odd_shapes(backend, gen, N, T, with_mask, loss_agg):
    logp, old, ref, adv, mask = make_batch(gen, N, T, empty_row=N > 2, garbage=with_mask)
    mask = mask if with_mask else None
    for is_level in IS_LEVELS:
        opts = dict(beta=0.1, loss_agg=loss_agg, is_level=is_level)
        assert_matches(run_public(grpo_loss, logp, old, adv, mask, ref, **opts),
                       run_reference64(logp, old, adv, mask, ref, **opts))


def test_non_contiguous_inputs(backend, gen):
    logp, old, ref, adv, mask = make_batch(gen, N=13, T=6)
    logp_t, old_t, ref_t, mask_t = (t.t().contiguous().t() for t in (logp, old, ref, mask))
    assert not logp_t.is_contiguous() and not mask_t.is_contiguous()
    adv_t = torch.stack([adv, adv], 1)[:, 0]
    opts = dict(beta=0.1, loss_agg="seq-mean-token-mean", is_level="sequence")
    assert_matches(run_public(grpo_loss, logp_t, old_t, adv_t, mask_t, ref_t, **opts),
                   run_reference64(logp, old, adv, mask, ref, **opts))


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.float32, torch.uint8], ids=str)
def test_mask_dtypes(backend, gen, mask_dtype):
    logp, old, ref, adv, mask = make_batch(gen)
    expected = run_reference64(logp, old, adv, mask, ref, beta=0.1)
    assert_matches(run_public(grpo_loss, logp, old, adv, mask.to(mask_dtype), ref, beta=0.1), expected)


@pytest.mark.parametrize("is_level", IS_LEVELS)
@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
def test_old_logp_none_is_on_policy(backend, gen, loss_agg, is_level):
    """old_logp=None: ratio exactly 1, nothing clipped, the clipped and unclipped objectives coincide,
    and the loss is the plain policy gradient -A · exp(logp - logp.detach()) (value -A, gradient -A)."""
    logp, _, ref, adv, mask = make_batch(gen)
    opts = dict(beta=0.1, loss_agg=loss_agg, is_level=is_level)
    got = run_public(grpo_loss, logp, None, adv, mask, ref, **opts)
    loss, metrics, grad = got
    assert metrics["ratio_mean"].item() == 1.0
    assert metrics["clip_frac"].item() == metrics["clip_frac_low"].item() == metrics["clip_frac_high"].item() == 0
    assert_matches(got, run_reference64(logp, logp, adv, mask, ref, **opts))
    # A zero-width clip range changes nothing when every ratio is exactly 1.
    assert_matches(run_public(grpo_loss, logp, None, adv, mask, ref, eps_low=0.0, eps_high=0.0, **opts),
                   (loss.double(), {k: v.double() for k, v in metrics.items()}, grad.double()))

    # Explicit on-policy surrogate.
    x = logp.double().requires_grad_()
    w = mask.double()
    lp = torch.where(mask, x, 0.0)
    d = torch.where(mask, ref.double(), 0.0) - lp
    per_token = -adv.double()[:, None] * torch.exp(lp - lp.detach()) + 0.1 * (torch.exp(d) - d - 1)
    if loss_agg == "token-mean":
        explicit = (per_token * w).sum() / w.sum()
    elif loss_agg == "seq-mean-token-mean":
        rows = w.sum(1) > 0
        explicit = ((per_token * w).sum(1)[rows] / w.sum(1)[rows]).mean()
    else:
        explicit = (per_token * w).sum() / w.numel()
    explicit.backward()
    torch.testing.assert_close(loss.double(), explicit.detach(), **VALUE_TOL)
    torch.testing.assert_close(grad.double(), x.grad, **GRAD_TOL[torch.float32])


@pytest.mark.parametrize("is_level", IS_LEVELS)
@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
def test_empty_mask_gives_zeros_not_nan(backend, gen, loss_agg, is_level):
    logp, old, ref, adv, _ = make_batch(gen, N=3, T=5)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    loss, metrics, grad = run_public(grpo_loss, logp, old, adv, mask, ref, beta=0.1, loss_agg=loss_agg,
                                     is_level=is_level)
    assert loss.item() == 0.0 and all(v.item() == 0.0 for v in metrics.values())
    assert torch.all(grad == 0)


@pytest.mark.parametrize("is_level", IS_LEVELS)
def test_empty_rows_and_padding_are_ignored(backend, gen, is_level):
    """Fully masked rows drop out of seq-mean-token-mean (they are not averaged in as zeros), leave
    token-mean alone, and count in seq-sum-norm's N·T; padded values never matter and get zero gradient."""
    logp, old, ref, adv, mask = make_batch(gen, N=5, T=9)
    assert not mask[-1].any()
    keep = slice(0, 4)
    for loss_agg, factor in [("token-mean", 1.0), ("seq-mean-token-mean", 1.0), ("seq-sum-norm", 4 / 5)]:
        opts = dict(beta=0.1, loss_agg=loss_agg, is_level=is_level)
        full = run_public(grpo_loss, logp, old, adv, mask, ref, **opts)
        part = run_public(grpo_loss, logp[keep], old[keep], adv[keep], mask[keep], ref[keep], **opts)
        torch.testing.assert_close(full[0], part[0] * factor, rtol=1e-6, atol=1e-7)
        for k in METRICS:
            torch.testing.assert_close(full[1][k], part[1][k], rtol=1e-6, atol=1e-7)
        assert torch.all(full[2][~mask] == 0) and torch.isfinite(full[2]).all()

    # Other garbage at the padded positions changes nothing.
    opts = dict(beta=0.1, loss_agg="token-mean", is_level=is_level)
    first = run_public(grpo_loss, logp, old, adv, mask, ref, **opts)
    second = run_public(grpo_loss, logp.masked_fill(~mask, -3.0), old.masked_fill(~mask, float("nan")), adv,
                        mask, ref.masked_fill(~mask, -float("inf")), **opts)
    assert first[0].item() == second[0].item()
    assert all(first[1][k].item() == second[1][k].item() for k in METRICS)
    assert torch.equal(first[2], second[2])


# --- TRL GRPOTrainer._compute_loss, written out ---------------------------------------------------------
TRL_LOSS_TYPES = {"dapo": "token-mean", "bnpo": "token-mean", "grpo": "seq-mean-token-mean",
                  "dr_grpo": "seq-sum-norm"}


def trl_compute_loss(per_token_logps, old_per_token_logps, ref_per_token_logps, advantages, completion_mask,
                     *, epsilon_low, epsilon_high, delta, beta, loss_type, importance_sampling_level,
                     max_completion_length):
    log_ratio = per_token_logps - old_per_token_logps
    if importance_sampling_level == "token":
        log_importance_weights = log_ratio
    else:
        log_importance_weights = (log_ratio * completion_mask).sum(-1) / completion_mask.sum(-1).clamp(min=1.0)
        log_importance_weights = log_importance_weights.unsqueeze(-1)
    coef_1 = torch.exp(log_importance_weights)
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    if delta is not None:
        coef_1 = torch.clamp(coef_1, max=delta)
    per_token_loss1 = coef_1 * advantages.unsqueeze(1)
    per_token_loss2 = coef_2 * advantages.unsqueeze(1)
    per_token_loss = -torch.min(per_token_loss1, per_token_loss2)
    per_token_kl = (torch.exp(ref_per_token_logps - per_token_logps)
                    - (ref_per_token_logps - per_token_logps) - 1)
    if beta != 0.0:
        per_token_loss = per_token_loss + beta * per_token_kl
    if loss_type == "grpo":
        loss = ((per_token_loss * completion_mask).sum(-1) / completion_mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token_loss * completion_mask).sum() / completion_mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = (per_token_loss * completion_mask).sum() / (per_token_loss.size(0) * max_completion_length)
    else:  # "dapo": normalised by the number of completion tokens in the (here: single-process) batch
        num_items_in_batch = completion_mask.sum()
        loss = (per_token_loss * completion_mask).sum() / num_items_in_batch

    def masked_batch_mean(x):
        return (x * completion_mask).sum() / completion_mask.sum()

    is_low_clipped = (coef_1 < 1 - epsilon_low) & (advantages.unsqueeze(1) < 0)
    is_high_clipped = (coef_1 > 1 + epsilon_high) & (advantages.unsqueeze(1) > 0)
    is_region_clipped = is_low_clipped | is_high_clipped
    metrics = {
        "kl": masked_batch_mean(per_token_kl),
        "clip_frac_low": masked_batch_mean(is_low_clipped.double()),
        "clip_frac_high": masked_batch_mean(is_high_clipped.double()),
        "clip_frac": masked_batch_mean(is_region_clipped.double()),
    }
    return loss, metrics


@pytest.mark.parametrize("importance_sampling_level", IS_LEVELS)
@pytest.mark.parametrize("loss_type", list(TRL_LOSS_TYPES))
def test_matches_trl(backend, gen, loss_type, importance_sampling_level):
    # TRL's "grpo" averages over every row, so compare on a batch without empty rows (where ours drops
    # them); TRL multiplies by the mask, so the padding must be finite.
    logp, old, ref, adv, mask = make_batch(gen, empty_row=False, garbage=False)
    T = logp.shape[1]
    delta, beta = 1.5, 0.04  # TRL recommends delta > 1 + epsilon_high
    x = logp.double().requires_grad_()
    trl_loss, trl_metrics = trl_compute_loss(
        x, old.double(), ref.double(), adv.double(), mask.double(), epsilon_low=0.2, epsilon_high=0.28,
        delta=delta, beta=beta, loss_type=loss_type, importance_sampling_level=importance_sampling_level,
        max_completion_length=T)
    trl_loss.backward()

    loss, metrics, grad = run_public(grpo_loss, logp, old, adv, mask, ref, eps_low=0.2, eps_high=0.28,
                                     delta=delta, beta=beta, loss_agg=TRL_LOSS_TYPES[loss_type],
                                     is_level=importance_sampling_level)
    torch.testing.assert_close(loss.double(), trl_loss.detach(), **VALUE_TOL)
    torch.testing.assert_close(grad.double(), x.grad, **GRAD_TOL[torch.float32])
    # TRL logs sequence-level clip fractions per sequence; ours are always per valid token.
    for k in (trl_metrics if importance_sampling_level == "token" else ["kl"]):
        torch.testing.assert_close(metrics[k].double(), trl_metrics[k].detach(), **VALUE_TOL, msg=k)


# --- verl core_algos: compute_policy_loss (vanilla, dual-clip) + kl_penalty("low_var_kl") + agg_loss -------
def verl_masked_mean(values, mask):
    return (values * mask).sum() / (mask.sum() + 1e-8)


def verl_agg_loss(loss_mat, loss_mask, loss_agg_mode):
    if loss_agg_mode == "token-mean":
        return verl_masked_mean(loss_mat, loss_mask)
    seq_losses = torch.sum(loss_mat * loss_mask, dim=-1)
    if loss_agg_mode == "seq-mean-token-mean":
        return torch.mean(seq_losses / torch.sum(loss_mask, dim=-1))
    assert loss_agg_mode == "seq-mean-token-sum-norm"
    return torch.sum(seq_losses) / loss_mask.shape[-1]


def verl_actor_loss(log_prob, old_log_prob, ref_log_prob, advantages, response_mask, *, clip_ratio_low,
                    clip_ratio_high, clip_ratio_c, kl_loss_coef, loss_agg_mode):
    negative_approx_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    pg_losses1 = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    pg_clipfrac = verl_masked_mean(torch.gt(pg_losses2, pg_losses1).double(), response_mask)
    pg_losses3 = -advantages * clip_ratio_c
    clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
    pg_losses = torch.where(advantages < 0, clip_pg_losses2, clip_pg_losses1)
    pg_loss = verl_agg_loss(pg_losses, response_mask, loss_agg_mode)
    kl = torch.clamp(ref_log_prob - log_prob, min=-20, max=20)
    kld = torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)
    kl_loss = verl_agg_loss(kld, response_mask, loss_agg_mode)
    return pg_loss + kl_loss * kl_loss_coef, pg_clipfrac


@pytest.mark.parametrize("loss_agg_mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_matches_verl(backend, gen, loss_agg_mode):
    """verl's dual-clip constant c acts as our delta (for c > 1 + eps_high); its pg_clipfrac is our
    clip_frac. verl's seq-mean-token-sum-norm divides by T only: N times our Dr.GRPO seq-sum-norm."""
    logp, old, ref, adv, mask = make_batch(gen, empty_row=False, garbage=False)
    N = logp.shape[0]
    x = logp.double().requires_grad_()
    verl_loss, verl_clipfrac = verl_actor_loss(
        x, old.double(), ref.double(), adv.double()[:, None].expand_as(x), mask.double(), clip_ratio_low=0.2,
        clip_ratio_high=0.28, clip_ratio_c=3.0, kl_loss_coef=0.1, loss_agg_mode=loss_agg_mode)
    verl_loss.backward()
    ours, scale = {"token-mean": ("token-mean", 1), "seq-mean-token-mean": ("seq-mean-token-mean", 1),
                   "seq-mean-token-sum-norm": ("seq-sum-norm", N)}[loss_agg_mode]
    loss, metrics, grad = run_public(grpo_loss, logp, old, adv, mask, ref, eps_low=0.2, eps_high=0.28,
                                     delta=3.0, beta=0.1, loss_agg=ours)
    torch.testing.assert_close(loss.double() * scale, verl_loss.detach(), **VALUE_TOL)
    torch.testing.assert_close(grad.double() * scale, x.grad, **GRAD_TOL[torch.float32])
    torch.testing.assert_close(metrics["clip_frac"].double(), verl_clipfrac, **VALUE_TOL)


# --- grpo_loss_from_logits ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("loss_agg, is_level", [("token-mean", "token"), ("seq-sum-norm", "sequence")])
def test_from_logits_equals_composition(backend, gen, dtype, loss_agg, is_level):
    N, T, V = 4, 6, 150
    logits = (torch.randn(N, T, V, generator=gen, dtype=torch.float64) * 2).to(dtype)
    ids = torch.randint(0, V, (N, T), generator=gen)
    _, old, ref, adv, mask = make_batch(gen, N, T, garbage=False)
    ids = ids.masked_fill(~mask, -100)  # padding ids are ignored, even out of range
    opts = dict(delta=2.0, beta=0.05, loss_agg=loss_agg, is_level=is_level)

    z = logits.clone().requires_grad_()
    loss, metrics = grpo_loss_from_logits(z, ids, old, adv, mask, ref, temperature=0.8, **opts)
    loss.backward()

    z2 = logits.clone().requires_grad_()
    logp = token_logprobs(z2, ids.masked_fill(~mask, 0), 0.8)
    loss2, metrics2 = grpo_loss(logp, old, adv, mask, ref, **opts)
    loss2.backward()
    assert loss.item() == loss2.item() and all(metrics[k].item() == metrics2[k].item() for k in METRICS)
    assert torch.equal(z.grad, z2.grad)

    z64 = logits.double().requires_grad_()
    logp64 = token_logprobs_reference(z64, ids.masked_fill(~mask, 0), 0.8)
    loss64, metrics64 = grpo_loss_reference(logp64, old.double(), adv.double(), mask, ref.double(), **opts)
    loss64.backward()
    torch.testing.assert_close(loss.double(), loss64, rtol=1e-5, atol=1e-6)
    for k in METRICS:
        torch.testing.assert_close(metrics[k].double(), metrics64[k], rtol=1e-5, atol=1e-6, msg=k)
    grad_tol = dict(rtol=1e-4, atol=1e-7) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1e-5)
    torch.testing.assert_close(z.grad.double(), z64.grad, **grad_tol)
    assert torch.all(z.grad[~mask] == 0)


# --- differentiability, dispatch -----------------------------------------------------------------------------
def test_differentiable_wrt_logp_only(backend, gen, monkeypatch):
    calls = []
    apply = grpo_module._GRPOLossFunction.apply
    monkeypatch.setattr(grpo_module._GRPOLossFunction, "apply", lambda *a: calls.append(1) or apply(*a))
    logp, old, ref, adv, mask = make_batch(gen, garbage=False)
    leaves = [t.clone().requires_grad_() for t in (logp, old, adv, ref)]
    loss, metrics = grpo_loss(leaves[0], leaves[1], leaves[2], mask, leaves[3], beta=0.1)
    assert len(calls) == (backend == "triton")  # the dispatch took the requested path
    assert not any(v.requires_grad for v in metrics.values())
    (2.5 * loss).backward()
    assert leaves[0].grad is not None and all(t.grad is None for t in leaves[1:])
    expected = run_reference64(logp, old, adv, mask, ref, beta=0.1)[2] * 2.5  # grad_output scales
    torch.testing.assert_close(leaves[0].grad.double(), expected, **GRAD_TOL[torch.float32])


def test_reference_keeps_float64(gen):
    logp, old, ref, adv, mask = make_batch(gen)
    loss, metrics = grpo_loss_reference(logp.double(), old.double(), adv.double(), mask, ref.double(), beta=0.1)
    assert loss.dtype == torch.float64 and all(v.dtype == torch.float64 for v in metrics.values())
    loss, metrics = grpo_loss_reference(logp.half(), old, adv, mask, ref, beta=0.1)
    assert loss.dtype == torch.float32 and all(v.dtype == torch.float32 for v in metrics.values())


@pytest.mark.interpreter
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(N=st.integers(1, 5), T=st.integers(1, 19), seed=st.integers(0, 2**31 - 1),
       loss_agg=st.sampled_from(LOSS_AGGS), is_level=st.sampled_from(IS_LEVELS),
       delta=st.sampled_from([None, 1.3, 4.0]), beta=st.sampled_from([0.0, 0.2]),
       eps=st.tuples(st.sampled_from([0.0, 0.1, 0.2]), st.sampled_from([0.0, 0.2, 0.28])))
def test_triton_property_random_configs(N, T, seed, loss_agg, is_level, delta, beta, eps):
    """Random shapes, masks and options: the Triton path equals the float64 reference and metric
    invariants hold (clip_frac = low + high, fractions in [0, 1], kl >= 0)."""
    logp, old, ref, adv, mask = make_batch(torch.Generator().manual_seed(seed), N, T, empty_row=seed % 2 == 0)
    opts = dict(eps_low=eps[0], eps_high=eps[1], delta=delta, beta=beta, loss_agg=loss_agg, is_level=is_level)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLIR_KERNELS", "triton")
        got = run_public(grpo_loss, logp, old, adv, mask, ref, **opts)
    assert_matches(got, run_reference64(logp, old, adv, mask, ref, **opts))
    m = got[1]
    torch.testing.assert_close(m["clip_frac"], m["clip_frac_low"] + m["clip_frac_high"])
    assert all(0 <= m[k] <= 1 for k in ("clip_frac", "clip_frac_low", "clip_frac_high")) and m["kl"] >= 0


# --- validation ----------------------------------------------------------------------------------------------
def _good_args():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(2, 3, generator=g)
    return dict(logp=logp, old_logp=logp + 0.1, advantages=torch.tensor([1.0, -1.0]),
                mask=torch.ones(2, 3, dtype=torch.bool), ref_logp=logp - 0.1)


BAD_LOSS_ARGS = [
    (dict(logp=torch.zeros(6)), "logp"),
    (dict(logp=torch.zeros(2, 3, dtype=torch.long)), "logp"),
    (dict(logp=torch.zeros(2, 3, dtype=torch.float64)), "logp"),
    (dict(old_logp=torch.zeros(2, 4)), "old_logp"),
    (dict(old_logp=torch.zeros(2, 3, dtype=torch.int32)), "old_logp"),
    (dict(advantages=torch.zeros(2, 1)), "advantages"),
    (dict(advantages=torch.zeros(3)), "advantages"),
    (dict(advantages=torch.zeros(2, dtype=torch.long)), "advantages"),
    (dict(advantages=[1.0, -1.0]), "advantages"),
    (dict(mask=torch.ones(3, 2, dtype=torch.bool)), "mask"),
    (dict(ref_logp=torch.zeros(1, 3)), "ref_logp"),
    (dict(eps_low=-0.1), "eps_low"),
    (dict(eps_low=1.0), "eps_low"),
    (dict(eps_high=-0.2), "eps_high"),
    (dict(beta=-0.1), "beta"),
    (dict(beta=0.1, ref_logp=None), "ref_logp"),
    (dict(delta=1.0), "delta"),
    (dict(delta=0.5), "delta"),
    (dict(delta="2"), "delta"),
    (dict(loss_agg="sum"), "loss_agg"),
    (dict(loss_agg="seq-mean-token-sum-norm"), "loss_agg"),
    (dict(is_level="seq"), "is_level"),
    (dict(normaliser=0.0), "normaliser"),
    (dict(normaliser=-2), "normaliser"),
    (dict(normaliser=torch.ones(2)), "normaliser"),
]


@pytest.mark.parametrize("overrides, name", BAD_LOSS_ARGS)
def test_grpo_loss_bad_inputs(backend, overrides, name):
    args = {**_good_args(), **overrides}
    with pytest.raises(ValueError, match=name):
        grpo_loss(args.pop("logp"), args.pop("old_logp"), args.pop("advantages"), args.pop("mask"),
                  args.pop("ref_logp"), **args)


@pytest.mark.parametrize("overrides, name", [
    (dict(logits=torch.zeros(6, 17)), "logits"),
    (dict(logits=torch.zeros(2, 3, 17, dtype=torch.long)), "logits"),
    (dict(ids=torch.zeros(2, 3)), "ids"),
    (dict(ids=torch.zeros(3, 2, dtype=torch.long)), "ids"),
    (dict(ids=torch.full((2, 3), 17)), "ids"),
    (dict(ids=torch.full((2, 3), -1)), "ids"),
    (dict(temperature=0.0), "temperature"),
    (dict(eps_low=-0.2), "eps_low"),
    (dict(loss_agg="mean"), "loss_agg"),
    (dict(beta=0.1, ref_logp=None), "ref_logp"),
    (dict(advantages=torch.zeros(3)), "advantages"),
    (dict(mask=torch.ones(2, 2)), "mask"),
])
def test_grpo_loss_from_logits_bad_inputs(backend, overrides, name):
    args = {**_good_args(), "logits": torch.zeros(2, 3, 17), "ids": torch.zeros(2, 3, dtype=torch.long),
            **overrides}
    del args["logp"]
    with pytest.raises(ValueError, match=name):
        grpo_loss_from_logits(args.pop("logits"), args.pop("ids"), args.pop("old_logp"), args.pop("advantages"),
                              args.pop("mask"), args.pop("ref_logp"), **args)


def test_from_logits_ignores_out_of_range_ids_only_where_masked(backend):
    args = _good_args()
    ids = torch.zeros(2, 3, dtype=torch.long)
    ids[1, 2] = -100
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="ids"):
        grpo_loss_from_logits(torch.zeros(2, 3, 17), ids, args["old_logp"], args["advantages"], mask)
    mask[1, 2] = False
    loss, _ = grpo_loss_from_logits(torch.zeros(2, 3, 17), ids, args["old_logp"], args["advantages"], mask)
    assert torch.isfinite(loss)


@pytest.mark.gpu
@pytest.mark.parametrize("loss_agg, is_level", [("token-mean", "token"), ("seq-mean-token-mean", "sequence")])
def test_cuda_default_dispatch_matches_reference(loss_agg, is_level, monkeypatch):
    """On a GPU: CUDA tensors take the compiled Triton path by default; rows longer than one block."""
    monkeypatch.delenv("RLIR_KERNELS", raising=False)
    monkeypatch.setattr(grpo_module, "MAX_BLOCK_T", 1024)
    logp, old, ref, adv, mask = make_batch(torch.Generator().manual_seed(0), N=16, T=2500)
    opts = dict(delta=1.5, beta=0.05, loss_agg=loss_agg, is_level=is_level)
    expected = run_reference64(logp, old, adv, mask, ref, **opts)
    loss, metrics, grad = run_public(grpo_loss, logp.cuda(), old.cuda(), adv.cuda(), mask.cuda(), ref.cuda(),
                                     **opts)
    assert_matches((loss.cpu(), {k: v.cpu() for k, v in metrics.items()}, grad.cpu()), expected)


def test_aggregate_tokens_reduces_like_each_loss_agg():
    from rlir.kernels.grpo_loss import aggregate_tokens

    x = torch.tensor([[1.0, 3.0, float("inf")], [5.0, float("nan"), float("inf")]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    assert aggregate_tokens(x, mask, "token-mean").item() == 3.0  # (1 + 3 + 5) / 3
    assert aggregate_tokens(x, mask, "seq-mean-token-mean").item() == 3.5  # (2 + 5) / 2
    assert aggregate_tokens(x, mask, "seq-sum-norm").item() == 1.5  # 9 / (2 * 3)
    with pytest.raises(ValueError, match="loss_agg"):
        aggregate_tokens(x, mask, "mean")
    # The denominators, and a caller's own denominator in their place.
    assert [loss_normaliser(mask, agg).item() for agg in LOSS_AGGS] == [3.0, 2.0, 6.0]
    assert loss_normaliser(torch.zeros(2, 3, dtype=torch.bool)).item() == 1.0  # never 0
    assert aggregate_tokens(x, mask, "token-mean", normaliser=torch.tensor(9.0)).item() == 1.0
    assert aggregate_tokens(x, mask, "seq-mean-token-mean", normaliser=7).item() == 1.0


# --- a caller's normaliser and the clip indicators -------------------------------------------------------------
@pytest.mark.parametrize("is_level", IS_LEVELS)
@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
def test_micro_batches_with_the_batch_normaliser_add_up_to_the_batch_loss(backend, gen, loss_agg, is_level):
    """Gradient accumulation: each micro-batch's loss over the whole batch's loss_normaliser; the losses and
    gradients add up to the batch's, with no rescaling afterwards."""
    logp, old, ref, adv, mask = make_batch(gen, N=7)
    opts = dict(delta=1.5, beta=0.1, loss_agg=loss_agg, is_level=is_level)
    expected = run_reference64(logp, old, adv, mask, ref, **opts)
    norm = loss_normaliser(mask, loss_agg)
    x = logp.clone().requires_grad_()
    total = 0.0
    for rows in (slice(0, 3), slice(3, 4), slice(4, 7)):
        loss, _ = grpo_loss(x[rows], old[rows], adv[rows], mask[rows], ref[rows], normaliser=norm, **opts)
        loss.backward()
        total = total + loss.detach()
    torch.testing.assert_close(total.double(), expected[0], **VALUE_TOL)
    torch.testing.assert_close(x.grad.double(), expected[2], **GRAD_TOL[torch.float32])
    # A plain number is a normaliser too: here the whole batch's, so the loss is the default one.
    loss, _, _ = run_public(grpo_loss, logp, old, adv, mask, ref, normaliser=float(norm), **opts)
    torch.testing.assert_close(loss.double(), expected[0], **VALUE_TOL)


@pytest.mark.parametrize("is_level, adv_per_token", [("token", False), ("token", True), ("sequence", False)])
@pytest.mark.parametrize("delta", [None, 1.5])
def test_clip_indicators_match_the_reference_and_the_metrics(backend, gen, is_level, delta, adv_per_token):
    logp, old, ref, adv, mask = make_batch(gen)
    if adv_per_token:
        adv = adv[:, None] * torch.linspace(-1.0, 1.5, logp.shape[1])
    opts = dict(delta=delta, beta=0.1, is_level=is_level)
    loss, metrics, clip = grpo_loss(logp, old, adv, mask, ref, return_clip=True, **opts)
    e_loss, e_metrics, e_clip = grpo_loss_reference(logp.double(), old.double(), adv.double(), mask, ref.double(),
                                                    return_clip=True, **opts)
    assert clip.dtype == torch.int8 and clip.shape == logp.shape and not clip.requires_grad
    assert torch.equal(clip, e_clip) and (clip[~mask] == 0).all()
    assert (clip == -1).any() and (clip == 1).any()
    n_tok = mask.sum()
    torch.testing.assert_close(metrics["clip_frac_low"], (clip == -1).sum() / n_tok)
    torch.testing.assert_close(metrics["clip_frac_high"], (clip == 1).sum() / n_tok)
    # The same call without return_clip gives the same loss and metrics.
    loss2, metrics2 = grpo_loss(logp, old, adv, mask, ref, **opts)
    assert loss2.item() == loss.item() and all(metrics2[k].item() == metrics[k].item() for k in METRICS)
    ratio = torch.exp(logp.double() - old.double())
    if is_level == "token":
        a = adv if adv_per_token else adv[:, None]
        expected = torch.where(mask & (ratio < 0.8) & (a < 0), -1, torch.where(mask & (ratio > 1.2) & (a > 0), 1, 0))
        assert torch.equal(clip, expected.to(torch.int8))
    else:  # one indicator per row, on each of its valid tokens
        rows = clip.abs().amax(1)
        assert torch.equal(clip.abs(), rows[:, None].expand_as(clip) * mask)
