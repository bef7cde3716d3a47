"""rlir.integrations.verl against the installed verl: same log-probs, entropies, loss, gradients and metrics.

Log-probs and entropies run on random logits with odd vocabulary sizes, in fp32 and bf16, as right-padded
[B, T, V] batches (padding rows hold large junk logits and take no gradient) and as packed [tokens, V] rows,
on both backends (PyTorch, and Triton through its CPU interpreter). Values are fp32: they match verl's own
function on the same logits in fp32 (what verl's flash-attn path computes on GPU; its CPU fallback rounds
bf16 log-softmaxes to bf16) to 1e-5. Gradients are in the logits' dtype: fp32 to 1e-5; bf16 within one bf16
rounding (rtol 2^-7) of verl's fp32 gradient.

The ``rlir_grpo`` policy loss is compared with verl's ``vanilla`` (GRPO with seq-mean-token-mean, DAPO with
clip-higher and token-mean, and the other aggregations) on a batch built to reach every branch: ratios in
range, clipped below and above, between 1 + 0.2 and 1 + 0.28 (clip-higher), past the dual clip, log-ratios
beyond +-20, an empty row, a zero advantage. Loss and gradient to rtol 1e-5; the metrics too.
"""
from __future__ import annotations

import importlib
import sys
import warnings
import zlib

import pytest
import torch

pytest.importorskip("verl", reason="verl is not installed (.ci/run installs '.[verl]' and verl==0.9.1)")

import verl.trainer.ppo.core_algos as core_algos  # noqa: E402
import verl.utils.torch_functional as verl_F  # noqa: E402
from verl.workers.config import FSDPActorConfig, PolicyLossConfig  # noqa: E402

from rlir.integrations import verl as rlir_verl  # noqa: E402
from rlir.integrations.verl import (  # noqa: E402
    POLICY_LOSS_NAME,
    VerlFallbackWarning,
    entropy_from_logits,
    entropy_from_logits_with_chunking,
    is_patched,
    logprobs_from_logits,
    patch_verl,
    rlir_grpo_policy_loss,
    unpatch_verl,
)

tlp_module = importlib.import_module("rlir.kernels.token_logprobs")

VERL_LOGPROBS = verl_F.logprobs_from_logits
VERL_ENTROPY = verl_F.entropy_from_logits
VERL_ENTROPY_CHUNKED = verl_F.entropy_from_logits_with_chunking
TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_TOL = {torch.float32: TOL, torch.bfloat16: dict(rtol=2 ** -7, atol=1e-5)}


@pytest.fixture(autouse=True)
def restored():
    """Every test starts and ends with verl as it ships, and fallback warnings not yet reported."""
    unpatch_verl()
    rlir_verl.reset_fallback_warnings()
    yield
    unpatch_verl()


@pytest.fixture
def gen(request):
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def small_blocks(monkeypatch):
    # Vocabulary chunks of 128, so V = 1001 runs the kernel's online logsumexp over several chunks and a tail.
    monkeypatch.setattr(tlp_module, "MAX_BLOCK_V", 128)


# ----------------------------------------------------------------------------------------------------------
# log-probs and entropies

LAYOUTS = {"padded": (3, 7), "packed": (13,)}


def make_logits(gen, layout, vocab, dtype):
    """Logits, labels, and per-position upstream gradients that are 0 on padding (whose logits are junk)."""
    shape = LAYOUTS[layout]
    logits = torch.randn(*shape, vocab, generator=gen, dtype=torch.float64) * 3
    labels = torch.randint(0, vocab, shape, generator=gen)
    weight = torch.randn(shape, generator=gen, dtype=torch.float64)
    if layout == "padded":
        valid = torch.arange(shape[1]) < torch.tensor([7, 4, 1])[:, None]
        logits[~valid] *= 100
        labels[~valid] = 0
        weight[~valid] = 0
    else:
        valid = torch.ones(shape, dtype=torch.bool)
    return logits.to(dtype), labels, weight.float(), valid


def value_and_grad(fn, logits, *args):
    x = logits.detach().requires_grad_()
    out, weight = fn(x, *args[:-1]), args[-1]
    (grad,) = torch.autograd.grad((out.float() * weight).sum(), x)
    return out.detach(), grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("vocab", [37, 1001])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_logprobs_match_verl(backend, small_blocks, gen, layout, vocab, dtype):
    logits, labels, weight, valid = make_logits(gen, layout, vocab, dtype)
    ours, ours_grad = value_and_grad(logprobs_from_logits, logits, labels, weight)
    theirs, theirs_grad = value_and_grad(VERL_LOGPROBS, logits.float(), labels, weight)
    assert ours.dtype == torch.float32 and ours_grad.dtype == dtype
    torch.testing.assert_close(ours[valid], theirs[valid], **TOL)
    torch.testing.assert_close(ours_grad.float(), theirs_grad.to(dtype).float(), **GRAD_TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("vocab", [37, 1001])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_entropies_match_verl(backend, small_blocks, gen, layout, vocab, dtype):
    logits, _, weight, valid = make_logits(gen, layout, vocab, dtype)
    theirs, theirs_grad = value_and_grad(VERL_ENTROPY, logits.float(), weight)
    ours, ours_grad = value_and_grad(entropy_from_logits, logits, weight)
    assert ours.dtype == torch.float32 and ours_grad.dtype == dtype
    torch.testing.assert_close(ours[valid], theirs[valid], **TOL)
    torch.testing.assert_close(ours_grad.float(), theirs_grad.to(dtype).float(), **GRAD_TOL[dtype])
    if layout == "packed":  # verl's chunked entropy takes [tokens, V] and upcasts to fp32 itself
        chunked, chunked_grad = value_and_grad(lambda x: VERL_ENTROPY_CHUNKED(x, chunk_size=4), logits, weight)
        ours, ours_grad = value_and_grad(lambda x: entropy_from_logits_with_chunking(x, chunk_size=4), logits, weight)
        torch.testing.assert_close(ours, chunked, **TOL)
        torch.testing.assert_close(ours_grad.float(), chunked_grad.float(), **GRAD_TOL[dtype])


def test_patch_reaches_the_fsdp_engine_and_undoes():
    engine = pytest.importorskip("verl.workers.engine.fsdp.transformer_impl",
                                 reason="verl's FSDP engine does not import here (it needs peft)")
    assert engine.logprobs_from_logits is VERL_LOGPROBS
    with patch_verl() as patch:
        assert patch.functions == ["logprobs_from_logits", "entropy_from_logits", "entropy_from_logits_with_chunking"]
        assert is_patched() and engine.logprobs_from_logits is logprobs_from_logits
        assert engine.verl_F.entropy_from_logits is entropy_from_logits
        assert core_algos.get_policy_loss_fn(POLICY_LOSS_NAME) is rlir_grpo_policy_loss
        again = patch_verl()  # idempotent: nothing more to replace or register
        assert again.functions == [] and not again.registered
        # The engine compiles its entropy function by default; rlir's runs eagerly under torch.compile.
        x = torch.randn(5, 11)
        torch.testing.assert_close(torch.compile(verl_F.entropy_from_logits, dynamic=True)(x), VERL_ENTROPY(x), **TOL)
    assert not is_patched() and engine.logprobs_from_logits is VERL_LOGPROBS
    assert verl_F.entropy_from_logits_with_chunking is VERL_ENTROPY_CHUNKED
    assert POLICY_LOSS_NAME not in core_algos.POLICY_LOSS_REGISTRY


def test_importing_verl_enable_turns_it_on():
    sys.modules.pop("rlir.integrations.verl_enable", None)  # imported afresh, as by a new verl worker
    module = importlib.import_module("rlir.integrations.verl_enable")
    assert is_patched() and POLICY_LOSS_NAME in core_algos.POLICY_LOSS_REGISTRY
    module.PATCH.unpatch()
    assert not is_patched()


# ----------------------------------------------------------------------------------------------------------
# the policy loss

LENGTHS = [11, 7, 0, 3, 11, 5, 9, 1]
ADVANTAGES = [1.0, -1.0, 0.7, -0.6, 0.0, 2.0, -1.5, 0.4]
# (row, column) -> log(new / old): clip-higher's band, above both high bounds, past the dual clip, beyond +-20
PLANTED = {(0, 0): 0.223, (0, 1): 0.405, (0, 2): 25.0, (0, 3): -22.0, (1, 0): -0.693, (1, 1): 1.386,
           (1, 2): 30.0, (1, 3): -27.0, (3, 0): 1.253, (5, 2): 0.223, (6, 4): -0.5}
SETTINGS = {  # name -> (clip_ratio_low, clip_ratio_high, loss_agg_mode)
    "grpo": (0.2, 0.2, "seq-mean-token-mean"),
    "dapo": (0.2, 0.28, "token-mean"),
    "clip_higher_seq_mean": (0.2, 0.28, "seq-mean-token-mean"),
    "token_sum": (0.2, 0.28, "token-sum"),
    "seq_mean_token_sum": (0.2, 0.28, "seq-mean-token-sum"),
    "seq_mean_token_sum_norm": (0.2, 0.28, "seq-mean-token-sum-norm"),
}
# verl's ppo_loss fills config.global_batch_info; empty means a single process with this micro-batch only.
GLOBAL = {"local": {}, "two_ranks": dict(dp_size=2, batch_num_tokens=80, global_batch_size=14, loss_scale_factor=None)}


def loss_batch(gen):
    n, t = len(LENGTHS), max(LENGTHS)
    mask = torch.arange(t) < torch.tensor(LENGTHS)[:, None]
    log_prob = torch.randn(n, t, generator=gen) * 0.5 - 1.0
    log_ratio = torch.randn(n, t, generator=gen) * 0.1
    for (row, col), value in PLANTED.items():
        log_ratio[row, col] = value
    old = log_prob - log_ratio
    old[~mask] = torch.randn(int((~mask).sum()), generator=gen) * 7  # junk on padding
    advantages = torch.tensor(ADVANTAGES)[:, None].expand(n, t).contiguous()  # verl broadcasts per token
    return old, log_prob, advantages, mask


def actor_config(low, high, mode, info=None, **extra):
    config = FSDPActorConfig(strategy="fsdp", rollout_n=2, ppo_micro_batch_size_per_gpu=2, clip_ratio_low=low,
                             clip_ratio_high=high, loss_agg_mode=mode, **extra)
    config.global_batch_info.update(info or {})
    return config


def run_loss(fn, old, log_prob, advantages, mask, config, **kwargs):
    x = log_prob.clone().requires_grad_()
    loss, metrics = fn(old, x, advantages, mask, config.loss_agg_mode, config, **kwargs)
    loss.backward()
    return loss.detach(), x.grad, metrics


@pytest.mark.parametrize("scope", list(GLOBAL))
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_policy_loss_matches_verl_vanilla(backend, gen, setting, scope):
    low, high, mode = SETTINGS[setting]
    config = actor_config(low, high, mode, GLOBAL[scope])
    batch = loss_batch(gen)
    theirs, theirs_grad, theirs_metrics = run_loss(core_algos.compute_policy_loss_vanilla, *batch, config)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VerlFallbackWarning)  # the kernel path, not a fallback
        ours, ours_grad, ours_metrics = run_loss(rlir_grpo_policy_loss, *batch, config)
    # The batch reaches every branch: clipping on both sides and the dual clip.
    assert theirs_metrics["actor/pg_clipfrac"] > 0 and theirs_metrics["actor/pg_clipfrac_lower"] > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-5, atol=1e-7)
    assert ours_metrics.keys() == theirs_metrics.keys()
    for key, value in theirs_metrics.items():
        assert ours_metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_clip_higher_changes_the_loss(gen):
    """The batch has ratios between 1.2 and 1.28 with positive advantages, so the two clip ranges differ."""
    batch = loss_batch(gen)
    grpo = run_loss(rlir_grpo_policy_loss, *batch, actor_config(0.2, 0.2, "token-mean"))[0]
    dapo = run_loss(rlir_grpo_policy_loss, *batch, actor_config(0.2, 0.28, "token-mean"))[0]
    assert not torch.allclose(grpo, dapo)


def test_verl_config_selects_the_loss_by_name(gen):
    """verl's own ppo_loss, with policy_loss.loss_mode set to rlir_grpo, gives what loss_mode vanilla gives."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.losses import ppo_loss

    patch_verl(logprobs=False)
    prompt_lens, response_lens = torch.tensor([4, 2, 3]), torch.tensor([5, 3, 1])
    prompt_mask = torch.arange(4).flip(0) < prompt_lens[:, None]  # left-padded prompts
    response_mask = torch.arange(5) < response_lens[:, None]
    data = TensorDict({
        "prompts": torch.ones(3, 4, dtype=torch.long), "responses": torch.ones(3, 5, dtype=torch.long),
        "attention_mask": torch.cat([prompt_mask, response_mask], 1).long(), "response_mask": response_mask.long(),
        "old_log_probs": torch.randn(3, 5, generator=gen) * 0.3 - 1,
        "advantages": torch.tensor([[1.0], [-0.5], [0.3]]).expand(3, 5).contiguous(),
    }, batch_size=[3])
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=int(response_mask.sum()), global_batch_size=3)
    log_probs = torch.randn(int(prompt_lens.sum() + response_lens.sum()), generator=gen) * 0.3 - 1  # packed

    results = {}
    for mode in ("vanilla", POLICY_LOSS_NAME):
        config = actor_config(0.2, 0.28, "seq-mean-token-mean", policy_loss=PolicyLossConfig(loss_mode=mode))
        x = log_probs.clone().requires_grad_()
        loss, metrics = ppo_loss(config, {"log_probs": x}, data)
        loss.backward()
        results[mode] = loss.detach(), x.grad, {k: float(m.aggregate()) for k, m in metrics.items()}
    (ours, ours_grad, ours_metrics), (theirs, theirs_grad, theirs_metrics) = results[POLICY_LOSS_NAME], results["vanilla"]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-5, atol=1e-7)
    assert ours_metrics == pytest.approx(theirs_metrics, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("case", ["rollout_is_weights", "dual_clip_below_high"])
def test_unsupported_settings_run_verl_vanilla_with_a_warning(gen, case):
    old, log_prob, advantages, mask = loss_batch(gen)
    kwargs, extra = {}, {}
    if case == "rollout_is_weights":
        kwargs["rollout_is_weights"] = torch.rand(log_prob.shape, generator=gen)
    else:
        extra["clip_ratio_c"] = 1.1
    config = actor_config(0.2, 0.28, "token-mean", **extra)
    theirs = run_loss(core_algos.compute_policy_loss_vanilla, old, log_prob, advantages, mask, config, **kwargs)
    with pytest.warns(VerlFallbackWarning, match="verl's own implementation"):
        ours = run_loss(rlir_grpo_policy_loss, old, log_prob, advantages, mask, config, **kwargs)
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=0)
    torch.testing.assert_close(ours[1], theirs[1], rtol=0, atol=0)


def test_bad_inputs_name_the_argument(gen):
    old, log_prob, advantages, mask = loss_batch(gen)
    with pytest.raises(ValueError, match="config"):
        rlir_grpo_policy_loss(old, log_prob, advantages, mask, "token-mean", None)
    with pytest.raises(ValueError, match="loss_agg_mode"):
        rlir_grpo_policy_loss(old, log_prob, advantages, mask, "token-median", actor_config(0.2, 0.2, "token-mean"))
    with pytest.raises(ValueError, match="batch_num_tokens"):
        rlir_grpo_policy_loss(old, log_prob, advantages, mask, "token-mean",
                              actor_config(0.2, 0.2, "token-mean", {"dp_size": 2}))
    with pytest.raises(ValueError, match="labels"):
        logprobs_from_logits(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_size"):
        entropy_from_logits_with_chunking(torch.randn(2, 5), chunk_size=0)
    with pytest.raises(ValueError, match="logprobs"):
        patch_verl(logprobs="yes")
