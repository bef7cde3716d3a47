"""Run verl's PPO/GRPO actor on rlir's kernels: one call, or one line of a verl config.

    from rlir.integrations.verl import patch_verl
    patch_verl()                      # in every process that builds a verl engine, before it is built

    # or, in a verl run (Ray workers included): verl imports the module in each worker, which turns it on
    actor_rollout_ref.model.external_lib=rlir.integrations.verl_enable
    actor_rollout_ref.actor.policy_loss.loss_mode=rlir_grpo     # the fused GRPO loss, chosen by name

Log-probs and entropies
    ``verl.utils.torch_functional.logprobs_from_logits``, ``entropy_from_logits`` and
    ``entropy_from_logits_with_chunking`` are replaced, in that module and wherever a loaded ``verl.*``
    module bound them by name (the FSDP engine, ``verl.workers.engine.fsdp.transformer_impl``, does), by
    :func:`rlir.kernels.token_logprobs`: one Triton pass over the vocabulary on CUDA, no [rows, V]
    log-softmax or softmax tensor, values in fp32 (as verl's flash-attn path returns them) and gradients in the
    logits' dtype. Engines built before the call keep the entropy function they captured.

The policy loss ``rlir_grpo``
    Registered in verl's policy-loss registry (``verl.trainer.ppo.core_algos``) by :func:`patch_verl`. It is
    verl's ``vanilla`` loss (PPO clip with ``clip_ratio_low``/``clip_ratio_high``, dual-clip at
    ``clip_ratio_c`` for negative advantages, the log-ratio clamped to +-20) computed by
    :func:`rlir.kernels.grpo_loss` in one fused pass, with verl's aggregation (every ``loss_agg_mode``, and
    the global-batch denominators in ``config.global_batch_info``) passed as grpo_loss's ``normaliser``.
    It returns verl's three metrics under their names. GRPO is ``vanilla`` with ``seq-mean-token-mean``;
    DAPO is ``vanilla`` with clip-higher and ``token-mean``: both are this loss with those settings.
    What grpo_loss cannot express exactly runs verl's ``vanilla`` instead, with one
    :class:`VerlFallbackWarning` per reason: rollout importance weights (``rollout_is_weights``), a
    dual-clip bound ``clip_ratio_c`` below ``1 + clip_ratio_high``, token weights in the mask, float64
    log-probs.

Verified against verl 0.9.1 (tests/integrations/test_verl.py); older versions are refused, other release
series patched with a warning.
"""
from __future__ import annotations

import importlib
import sys
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch

from rlir.kernels import grpo_loss, loss_normaliser, token_logprobs, trusted_inputs

__all__ = [
    "patch_verl",
    "unpatch_verl",
    "is_patched",
    "VerlPatch",
    "VerlFallbackWarning",
    "reset_fallback_warnings",
    "logprobs_from_logits",
    "entropy_from_logits",
    "entropy_from_logits_with_chunking",
    "rlir_grpo_policy_loss",
    "POLICY_LOSS_NAME",
    "MIN_VERL_VERSION",
]

MIN_VERL_VERSION = "0.9.0"
VERIFIED_VERL_SERIES = ("0.9",)
POLICY_LOSS_NAME = "rlir_grpo"
# verl clamps log(ratio) to this range before exp(); the same clamp keeps the two losses equal at extreme ratios.
LOG_RATIO_CLAMP = 20.0
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class VerlFallbackWarning(UserWarning):
    """A setting rlir's kernels do not cover: verl's own function ran instead."""


_warned: set = set()


def reset_fallback_warnings() -> None:
    """Forget which fallbacks were already reported, so each warns again (once)."""
    for key in [k for k in _warned if k != "version"]:
        _warned.discard(key)


def _warn_fallback(what: str, reason: str) -> None:
    key = f"{what}:{reason}"
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"rlir.integrations.verl: {reason} is not supported by rlir's kernels, so {what} uses "
                      "verl's own implementation for it.", VerlFallbackWarning, stacklevel=3)


def _verl_module(name: str):
    """Import a verl module, refusing verl versions this integration does not know."""
    try:
        import verl
    except ImportError as err:
        raise ImportError("rlir.integrations.verl needs verl (verified with 0.9.1): pip install verl==0.9.1") from err
    from packaging.version import Version

    version = Version(verl.__version__)
    if version < Version(MIN_VERL_VERSION):
        raise RuntimeError(f"rlir.integrations.verl supports verl >= {MIN_VERL_VERSION} (found {verl.__version__}): "
                           "older policy losses take other arguments")
    if f"{version.major}.{version.minor}" not in VERIFIED_VERL_SERIES and "version" not in _warned:
        _warned.add("version")
        warnings.warn(f"rlir.integrations.verl was verified against verl {', '.join(VERIFIED_VERL_SERIES)}.x; verl "
                      f"{verl.__version__} may have changed the functions or the loss: run tests/integrations/test_verl.py.",
                      UserWarning, stacklevel=3)
    return importlib.import_module(name)


# --------------------------------------------------------------------------------------------------
# log-probs and entropies, with verl's signatures

_ORIGINALS: Dict[str, Callable] = {}  # verl's own functions, recorded by the first patch


def _verl_function(name: str) -> Callable:
    if name in _ORIGINALS:
        return _ORIGINALS[name]
    return getattr(_verl_module("verl.utils.torch_functional"), name)


def _rows(logits: torch.Tensor) -> torch.Tensor:
    """[..., V] as the 2-D or 3-D logits token_logprobs takes."""
    return logits if logits.dim() in (2, 3) else logits.reshape(-1, logits.shape[-1])


@torch.compiler.disable  # verl may torch.compile these; the kernel is already one fused pass
def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, inplace_backward: bool = True) -> torch.Tensor:
    """Log-probability of ``labels`` under ``softmax(logits)``: logits [..., V], labels [...] -> fp32 [...].
    ``inplace_backward`` (an option of verl's flash-attn path) changes nothing: no log-softmax is kept."""
    if not isinstance(logits, torch.Tensor) or logits.dtype not in KERNEL_DTYPES:
        _warn_fallback("logprobs_from_logits", f"logits of dtype {getattr(logits, 'dtype', type(logits).__name__)}")
        return _verl_function("logprobs_from_logits")(logits, labels, inplace_backward=inplace_backward)
    if not isinstance(labels, torch.Tensor) or labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels must be a tensor of shape {tuple(logits.shape[:-1])}, got "
                         f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    z = _rows(logits)
    return token_logprobs(z, labels.reshape(z.shape[:-1])).view(labels.shape)


@torch.compiler.disable
def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` per row: logits [..., V] -> fp32 [...], differentiable."""
    if not isinstance(logits, torch.Tensor) or logits.dtype not in KERNEL_DTYPES:
        _warn_fallback("entropy_from_logits", f"logits of dtype {getattr(logits, 'dtype', type(logits).__name__)}")
        return _verl_function("entropy_from_logits")(logits)
    z = _rows(logits)
    unused_ids = torch.zeros(z.shape[:-1], dtype=torch.int32, device=z.device)
    with trusted_inputs():  # the ids are ours (all 0): no range check, no host sync
        _, entropy = token_logprobs(z, unused_ids, return_entropy=True)
    return entropy.view(logits.shape[:-1])


@torch.compiler.disable
def entropy_from_logits_with_chunking(logits: torch.Tensor, chunk_size: int = 2048) -> torch.Tensor:
    """:func:`entropy_from_logits`; the kernel streams the vocabulary, so ``chunk_size`` is not needed."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return entropy_from_logits(logits)


REPLACEMENTS = {
    "logprobs_from_logits": logprobs_from_logits,
    "entropy_from_logits": entropy_from_logits,
    "entropy_from_logits_with_chunking": entropy_from_logits_with_chunking,
}


# --------------------------------------------------------------------------------------------------
# the policy loss


def _clip_ranges(config) -> Tuple[float, float, float]:
    clip = config.clip_ratio
    low = config.clip_ratio_low if config.clip_ratio_low is not None else clip
    high = config.clip_ratio_high if config.clip_ratio_high is not None else clip
    return float(low), float(high), float(config.get("clip_ratio_c", 3.0))


def _unsupported(log_prob, response_mask, rollout_is_weights, eps_low, eps_high, dual_clip) -> Optional[str]:
    if rollout_is_weights is not None:
        return "rollout_is_weights (per-token rollout importance weights)"
    if log_prob.dtype not in KERNEL_DTYPES:
        return f"{log_prob.dtype} log-probs"
    if not 0 <= eps_low < 1 or eps_high < 0:
        return f"clip_ratio_low={eps_low}, clip_ratio_high={eps_high} (grpo_loss needs 0 <= low < 1, high >= 0)"
    if not dual_clip >= 1 + eps_high:
        return f"clip_ratio_c={dual_clip} below 1 + clip_ratio_high"
    if response_mask.dtype != torch.bool and not bool(((response_mask == 0) | (response_mask == 1)).all()):
        return "a response_mask with values other than 0 and 1 (token weights)"
    return None


def _as_number(value, device):
    return value.to(device=device, dtype=torch.float32) if isinstance(value, torch.Tensor) else value


def _aggregation(mode: str, valid: torch.Tensor, info: dict):
    """verl's ``agg_loss(mode, **global_batch_info)`` as (grpo_loss loss_agg, normaliser). Every mode is a sum
    of the masked per-token losses (seq-mean-token-mean: of the row means) divided by one denominator."""
    dp_size = int(info.get("dp_size") or 1)
    if mode == "token-sum":
        return "token-mean", 1.0 / dp_size
    if mode == "token-mean":
        tokens = info.get("batch_num_tokens")
        if tokens is None:
            if dp_size > 1:
                raise ValueError("config.global_batch_info['batch_num_tokens'] is required when dp_size > 1")
            tokens = loss_normaliser(valid, "token-mean")
        return "token-mean", _as_number(tokens, valid.device) / dp_size
    sequences = info.get("global_batch_size")
    if sequences is None:
        if dp_size > 1:
            raise ValueError("config.global_batch_info['global_batch_size'] is required when dp_size > 1")
        sequences = loss_normaliser(valid, "seq-mean-token-mean")  # the non-empty rows
    sequences = _as_number(sequences, valid.device) / dp_size
    if mode == "seq-mean-token-mean":
        return "seq-mean-token-mean", sequences
    if mode == "seq-mean-token-sum":
        return "token-mean", sequences
    scale = info.get("loss_scale_factor")  # seq-mean-token-sum-norm
    return "token-mean", sequences * (valid.shape[-1] if scale is None else scale)


VERL_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def rlir_grpo_policy_loss(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                          response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config=None,
                          rollout_is_weights: Optional[torch.Tensor] = None):
    """verl's ``vanilla`` policy loss on :func:`rlir.kernels.grpo_loss`, with verl's policy-loss signature:
    (loss, {"actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"}). All tensors [bsz, response_len];
    ``config`` is verl's ActorConfig (clip ranges and ``global_batch_info``)."""
    if config is None or not hasattr(config, "clip_ratio"):
        raise ValueError(f"config must be verl's actor config (with clip_ratio), got {type(config).__name__}")
    if loss_agg_mode not in VERL_AGG_MODES:
        raise ValueError(f"loss_agg_mode must be one of {list(VERL_AGG_MODES)}, got {loss_agg_mode!r}")
    eps_low, eps_high, dual_clip = _clip_ranges(config)
    reason = _unsupported(log_prob, response_mask, rollout_is_weights, eps_low, eps_high, dual_clip)
    if reason is not None:
        _warn_fallback(f"policy loss {POLICY_LOSS_NAME!r}", reason)
        vanilla = _verl_module("verl.trainer.ppo.core_algos").compute_policy_loss_vanilla
        return vanilla(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights)

    valid = response_mask if response_mask.dtype == torch.bool else response_mask != 0
    current = log_prob.detach()
    # old within current +- 20 makes log(ratio) = current - old lie in verl's clamped range.
    old = torch.clamp(old_log_prob.detach(), current - LOG_RATIO_CLAMP, current + LOG_RATIO_CLAMP)
    loss_agg, normaliser = _aggregation(loss_agg_mode, valid, getattr(config, "global_batch_info", None) or {})
    # The dual clip caps the ratio of negative-advantage tokens at clip_ratio_c: grpo_loss's delta, exactly so
    # while clip_ratio_c >= 1 + clip_ratio_high (checked above).
    loss, metrics = grpo_loss(log_prob, old, advantages, valid, eps_low=eps_low, eps_high=eps_high, delta=dual_clip,
                              loss_agg=loss_agg, normaliser=normaliser)
    with torch.no_grad():
        log_ratio = torch.where(valid, current - old, 0.0)
        tokens = valid.sum().clamp(min=1)
        dual_clipped = (advantages < 0) & (torch.exp(log_ratio) > dual_clip) & valid
        clipfrac, ppo_kl, lower = torch.stack([
            metrics["clip_frac"], -log_ratio.sum() / tokens, dual_clipped.sum() / tokens]).tolist()
    return loss, {"actor/pg_clipfrac": clipfrac, "actor/ppo_kl": ppo_kl, "actor/pg_clipfrac_lower": lower}


def register_policy_loss() -> bool:
    """Put ``rlir_grpo`` in verl's policy-loss registry; True if this call added it."""
    registry = _verl_module("verl.trainer.ppo.core_algos").POLICY_LOSS_REGISTRY
    if registry.get(POLICY_LOSS_NAME) is rlir_grpo_policy_loss:
        return False
    if POLICY_LOSS_NAME in registry:
        raise RuntimeError(f"verl's policy-loss registry already holds another {POLICY_LOSS_NAME!r}")
    registry[POLICY_LOSS_NAME] = rlir_grpo_policy_loss
    return True


def _unregister_policy_loss() -> None:
    registry = _verl_module("verl.trainer.ppo.core_algos").POLICY_LOSS_REGISTRY
    if registry.get(POLICY_LOSS_NAME) is rlir_grpo_policy_loss:
        del registry[POLICY_LOSS_NAME]


# --------------------------------------------------------------------------------------------------
# patching


def _verl_modules():
    return [m for name, m in list(sys.modules.items()) if m is not None and (name == "verl" or name.startswith("verl."))]


def _rebind(old: Callable, new: Callable) -> int:
    """Point every global of a loaded verl module that is ``old`` at ``new``; returns how many."""
    changed = 0
    for module in _verl_modules():
        for name, value in list(vars(module).items()):
            if value is old:
                setattr(module, name, new)
                changed += 1
    return changed


class VerlPatch:
    """What :func:`patch_verl` did; ``unpatch()`` (or leaving a ``with`` block) undoes it."""

    def __init__(self, functions: List[str], registered: bool):
        self.functions = functions  # verl functions this call replaced
        self.registered = registered  # whether this call registered the policy loss

    def unpatch(self) -> None:
        for name in self.functions:
            _rebind(REPLACEMENTS[name], _ORIGINALS[name])
        self.functions = []
        if self.registered:
            _unregister_policy_loss()
            self.registered = False

    def __enter__(self) -> "VerlPatch":
        return self

    def __exit__(self, *exc) -> None:
        self.unpatch()

    def __repr__(self) -> str:
        return f"VerlPatch(functions={self.functions}, registered={self.registered})"


def patch_verl(*, logprobs: bool = True, loss: bool = True) -> VerlPatch:
    """Turn rlir's kernels on in this process's verl: ``logprobs`` replaces verl's log-prob and entropy
    functions in every loaded verl module (call it before verl builds its engine; modules imported later
    take the replaced ones), ``loss`` registers the ``rlir_grpo`` policy loss. Idempotent. Returns a
    :class:`VerlPatch` to undo what this call did (``.unpatch()`` or a ``with`` block)."""
    if not isinstance(logprobs, bool) or not isinstance(loss, bool):
        raise ValueError("logprobs and loss must be bools")
    torch_functional = _verl_module("verl.utils.torch_functional")
    replaced = []
    if logprobs:
        for name, replacement in REPLACEMENTS.items():
            current = getattr(torch_functional, name)
            if current is not replacement:
                _ORIGINALS[name] = current
                replaced.append(name)
            _rebind(_ORIGINALS[name], replacement)
    registered = register_policy_loss() if loss else False
    return VerlPatch(replaced, registered)


def unpatch_verl() -> bool:
    """Restore verl's own functions everywhere and drop ``rlir_grpo`` from the registry. True if anything changed."""
    changed = False
    for name, replacement in REPLACEMENTS.items():
        if name in _ORIGINALS:
            changed |= bool(_rebind(replacement, _ORIGINALS[name]))
    registry = _verl_module("verl.trainer.ppo.core_algos").POLICY_LOSS_REGISTRY
    changed |= registry.get(POLICY_LOSS_NAME) is rlir_grpo_policy_loss
    _unregister_policy_loss()
    return changed


def is_patched() -> bool:
    """Whether verl's ``logprobs_from_logits`` currently runs rlir's kernel."""
    return _verl_module("verl.utils.torch_functional").logprobs_from_logits is logprobs_from_logits
