"""Run TRL's ``GRPOTrainer`` on rlir's kernels with one call.

    from trl import GRPOTrainer
    from rlir.integrations.trl import patch_grpo_trainer

    patch_grpo_trainer(GRPOTrainer)      # every GRPOTrainer: log-probs and loss via rlir.kernels
    patch_grpo_trainer(trainer)          # or one instance; the returned handle unpatches
    with patch_grpo_trainer(trainer):    # or for a block
        trainer.train()

Two methods of the trainer are replaced; everything else (generation, rewards, advantages, logging,
gradient accumulation, distributed reduction) stays TRL's.

``_get_per_token_logps_and_entropies`` (``logprobs=True``)
    Runs the model's ordinary forward for the last ``logits_to_keep + 1`` positions and turns those
    logits into per-token log-probs (and entropies) with :func:`rlir.kernels.token_logprobs` at the
    trainer's sampling temperature: one Triton pass over the vocabulary on CUDA, no log-softmax tensor.
    Positions whose ``attention_mask`` is 0 read 0, as in TRL >= 1.15. Batches carrying multimodal or
    other extra inputs, or asking for the MoE auxiliary loss, go to TRL's own method.
    Trade-off: TRL >= 1.15 scores through its own fused LM head, which never holds the [B, T, V] logits
    and accumulates the projection in fp32; this path holds them, in the model's compute dtype (bf16
    under mixed precision), as TRL <= 1.14 did. ``logprobs=False`` keeps TRL's scoring and patches only
    the loss.

``_compute_loss`` (``loss=True``)
    Computes the clipped GRPO objective (+ k3 KL when ``beta != 0``) with :func:`rlir.kernels.grpo_loss`,
    passing it TRL's own denominator for the loss type as ``normaliser`` (N rows; ``accum`` is the
    gradient-accumulation steps in training, 1 in evaluation):

    ==========  ====================  =============================================================
    loss_type   grpo_loss loss_agg    normaliser (TRL's)
    ==========  ====================  =============================================================
    grpo        seq-mean-token-mean   N * accum   (the mean of the row means over all N rows)
    bnpo        token-mean            n_tokens * accum
    dapo        token-mean            TRL's ``num_items_in_batch`` normaliser (accumulation included)
    dr_grpo     seq-sum-norm          N * max_completion_length * accum
    luspo       seq-sum-norm          N * accum   (the mean of the row sums)
    ==========  ====================  =============================================================

    Both importance-sampling levels ("token", "sequence" = GSPO), ``epsilon``/``epsilon_high``, ``delta``
    (> 1) and ``beta`` >= 0 map one-to-one onto grpo_loss's arguments. The metrics TRL logs (``kl``,
    ``entropy`` and the ``clip_ratio/*`` family) are logged under the same names with the same
    cross-process reduction: ``kl`` and the token-level clip means come from grpo_loss's metrics; the
    per-sequence ones (``clip_ratio/low_min``, ``clip_ratio/high_max``, and the clip means at sequence
    level, which TRL averages over sequences, not tokens) from the per-token clip indicators grpo_loss
    returns (``return_clip=True``).

Anything grpo_loss cannot express exactly leaves that call to TRL's original method, with one
:class:`TRLFallbackWarning` per option naming it: loss types cispo / sapo / vespo,
``top_entropy_quantile < 1``, ``off_policy_mask_threshold``, vLLM importance-sampling correction,
the entropy bonus (``entropy_coef`` / ``use_adaptive_entropy``), the MoE auxiliary loss,
``use_bias_correction_kl`` with ``beta != 0``, per-token advantages, masks other than 0/1, and epsilons,
``delta`` or ``beta`` outside grpo_loss's domain. Nothing is ever computed differently without a warning.
Note that TRL's ``use_bias_correction_kl`` defaults to True (the KL term is weighted by the ratio), so a
run with ``beta != 0`` uses rlir's loss only with ``GRPOConfig(use_bias_correction_kl=False)``.

Verified (same loss, gradients and metrics as TRL's own path) against TRL 1.10 to 1.16, whose
``_compute_loss`` bodies are identical; older versions are refused, newer ones patched with a warning.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import types
import warnings
from typing import Any, Callable, Dict, List, Optional

import torch

from rlir.kernels import grpo_loss, loss_normaliser, token_logprobs

__all__ = [
    "patch_grpo_trainer",
    "unpatch_grpo_trainer",
    "is_patched",
    "GRPOTrainerPatch",
    "TRLFallbackWarning",
    "SUPPORTED_LOSS_TYPES",
    "MIN_TRL_VERSION",
    "reset_fallback_warnings",
]

MIN_TRL_VERSION = "1.10.0"
# Release series whose GRPOTrainer the tests compared against (identical _compute_loss bodies).
VERIFIED_TRL_SERIES = ("1.10", "1.11", "1.12", "1.13", "1.14", "1.15", "1.16")

LOGPROBS_METHOD = "_get_per_token_logps_and_entropies"
LOSS_METHOD = "_compute_loss"

# TRL loss_type -> grpo_loss aggregation (TRL's denominator is _trl_normaliser's).
LOSS_AGG = {
    "grpo": "seq-mean-token-mean",
    "bnpo": "token-mean",
    "dapo": "token-mean",
    "dr_grpo": "seq-sum-norm",
    "luspo": "seq-sum-norm",
}
SUPPORTED_LOSS_TYPES = tuple(LOSS_AGG)

_MARK = "__rlir_patch__"  # attribute on our replacement functions: {"original": fn, "previous": dict entry}
_MISSING = object()


class TRLFallbackWarning(UserWarning):
    """A GRPOTrainer configuration rlir's kernels do not cover: TRL's own method ran instead."""


_warned: set = set()


def _warn_once(key: str, message: str, category=TRLFallbackWarning, stacklevel: int = 4) -> None:
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, category, stacklevel=stacklevel)


def reset_fallback_warnings() -> None:
    """Forget which fallbacks were already reported, so each warns again (once)."""
    _warned.clear()


def _warn_fallback(method: str, option: str) -> None:
    _warn_once(
        f"{method}:{option}",
        f"rlir.integrations.trl: {option} is not supported by rlir's kernels, so "
        f"GRPOTrainer.{method} uses TRL's own implementation for this configuration.",
    )


# --------------------------------------------------------------------------------------------------
# log-probs


def _profiling(trainer, name: str):
    """TRL's timing context for ``name`` (what its own decorator records), when TRL has one."""
    try:
        from trl.extras.profiling import profiling_context
    except ImportError:  # pragma: no cover - present in every supported TRL
        return contextlib.nullcontext()
    if hasattr(trainer, "state") and hasattr(trainer, "args") and hasattr(trainer, "accelerator"):
        return profiling_context(trainer, name)
    return contextlib.nullcontext()


def _accepts_logits_to_keep(trainer, model) -> bool:
    keys = getattr(trainer, "model_kwarg_keys", None)  # some TRL versions record the forward's parameters
    if keys is not None:
        return "logits_to_keep" in keys
    module = trainer.accelerator.unwrap_model(model)
    if hasattr(module, "get_base_model"):  # PEFT
        module = module.get_base_model()
    try:
        return "logits_to_keep" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def _rlir_logps_and_entropies(trainer, model, input_ids, attention_mask, logits_to_keep, batch_size,
                              compute_entropy):
    k = int(logits_to_keep)
    rows = input_ids.size(0)
    step = batch_size or rows
    pass_ltk = _accepts_logits_to_keep(trainer, model)
    # The entropies only feed metrics and masks unless the entropy bonus differentiates through them.
    entropy_grad = bool(getattr(trainer, "_entropy_bonus_enabled", False))
    all_logps: List[torch.Tensor] = []
    all_entropies: List[torch.Tensor] = []
    for start in range(0, rows, step):
        ids = input_ids[start:start + step]
        att = attention_mask[start:start + step]
        kwargs: Dict[str, Any] = dict(input_ids=ids, attention_mask=att, use_cache=False)
        if pass_ltk:
            kwargs["logits_to_keep"] = k + 1
        with trainer.accelerator.autocast():
            logits = model(**kwargs).logits
        # Position j predicts token j + 1. Score all k + 1 kept positions (the last one against a dummy
        # target, dropped below) so the logits are passed on as they are, without a sliced copy.
        first = ids.size(1) - k  # the completion's first token
        logits = logits[:, logits.size(1) - (k + 1):]
        targets = torch.cat([ids[:, first:], ids[:, -1:]], dim=1)
        scored = att[:, first:] != 0  # TRL scores only attended positions and reports 0 elsewhere
        if compute_entropy:
            logp, entropy = token_logprobs(logits, targets, trainer.temperature, return_entropy=True)
            entropy = entropy[:, :-1]
            if not entropy_grad:
                entropy = entropy.detach()
            all_entropies.append(entropy.masked_fill(~scored, 0.0))
        else:
            logp = token_logprobs(logits, targets, trainer.temperature)
        all_logps.append(logp[:, :-1].masked_fill(~scored, 0.0))
    logps = torch.cat(all_logps, dim=0)
    entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
    return logps, entropies, None


def _make_logprobs_method(original: Callable) -> Callable:
    @functools.wraps(original)
    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                           batch_size=None, compute_entropy=False, compute_aux_loss=False,
                                           **extra):
        option = None
        if compute_aux_loss:
            option = "the MoE load-balancing loss (router_aux_loss_coef)"
        else:
            given = sorted(name for name, value in extra.items() if value is not None)
            if given:
                option = f"extra model inputs ({', '.join(given)})"
        if option is not None:
            _warn_fallback(LOGPROBS_METHOD, option)
            return original(self, model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                            compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **extra)
        with _profiling(self, LOGPROBS_METHOD):
            return _rlir_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                             batch_size, compute_entropy)

    return _get_per_token_logps_and_entropies


# --------------------------------------------------------------------------------------------------
# loss


# Per-sample inputs GRPOTrainer hands its log-prob method for multimodal models.
_MULTIMODAL_INPUTS = (
    "pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes", "num_tiles",
    "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids",
)


def _loss_mask(inputs) -> torch.Tensor:
    mask = inputs["completion_mask"]
    if "tool_mask" in inputs:
        mask = mask * inputs["tool_mask"]
    return mask


def _unsupported_loss_option(trainer, inputs) -> Optional[str]:
    """The first option of this trainer/batch that grpo_loss cannot reproduce exactly, else None."""
    try:
        loss_type = trainer.loss_type
        level = trainer.importance_sampling_level
        eps_low, eps_high, beta = trainer.epsilon_low, trainer.epsilon_high, trainer.beta
        args = trainer.args
    except AttributeError as err:
        return f"this GRPOTrainer version (missing attribute {err.name!r})"
    if loss_type not in LOSS_AGG:
        return f"loss_type={loss_type!r}"
    if level not in ("token", "sequence"):
        return f"importance_sampling_level={level!r}"
    quantile = getattr(trainer, "top_entropy_quantile", 1.0)
    if quantile < 1.0:
        return f"top_entropy_quantile={quantile}"
    threshold = getattr(trainer, "off_policy_mask_threshold", None)
    if threshold is not None:
        return f"off_policy_mask_threshold={threshold}"
    if getattr(trainer, "use_vllm", False) and getattr(trainer, "vllm_importance_sampling_correction", False):
        return "vllm_importance_sampling_correction=True (per-token importance weights)"
    if getattr(trainer, "_entropy_bonus_enabled", False):
        return "the entropy bonus (entropy_coef / use_adaptive_entropy)"
    if getattr(trainer, "aux_loss_enabled", False):
        return "the MoE load-balancing loss (router_aux_loss_coef)"
    if beta < 0:
        return f"beta={beta} (grpo_loss needs beta >= 0)"
    if beta != 0 and getattr(args, "use_bias_correction_kl", False):
        return "use_bias_correction_kl=True"
    if not 0 <= eps_low < 1:
        return f"epsilon={eps_low} (grpo_loss needs 0 <= epsilon < 1)"
    if eps_high < 0:
        return f"epsilon_high={eps_high} (grpo_loss needs epsilon_high >= 0)"
    delta = getattr(args, "delta", None)
    if delta is not None and not delta > 1:
        return f"delta={delta} (grpo_loss needs delta > 1)"
    advantages = inputs.get("advantages")
    if not isinstance(advantages, torch.Tensor) or advantages.dim() != 1:
        return "per-token advantages (advantages of shape (B, T))"
    mask = _loss_mask(inputs)
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        return "a completion/tool mask with values other than 0 and 1 (token weights)"
    return None


def _trl_normaliser(trainer, inputs, loss_type: str, valid: torch.Tensor, train: bool):
    """TRL's denominator of the summed per-token losses (grpo: of the summed row means), gradient
    accumulation included, as grpo_loss's ``normaliser``."""
    if loss_type == "dapo":
        # TRL divides the token sum by the generation batch's token count, rescaled to this micro-batch.
        normaliser = inputs["num_items_in_batch"].clamp(min=1.0) / trainer.accelerator.num_processes
        if train:
            normaliser = normaliser * trainer.current_gradient_accumulation_steps / trainer.args.steps_per_generation
        return normaliser.to(valid.device)
    accum = trainer.current_gradient_accumulation_steps if train else 1
    if loss_type == "bnpo":
        return loss_normaliser(valid, "token-mean") * accum
    rows = valid.shape[0]  # grpo (row means) and luspo (row sums) average over every row, empty ones too
    if loss_type == "dr_grpo":
        return float(rows * trainer.max_completion_length * accum)
    return float(rows * accum)


def _nan_extreme(values: torch.Tensor, largest: bool) -> float:
    values = values[~torch.isnan(values)]
    if values.numel() == 0:
        return float("nan")
    return (values.max() if largest else values.min()).item()


def _log_loss_metrics(trainer, metrics, clip, mask, entropies, level: str, beta: float) -> None:
    """Log what TRL's loss logs, under its names and with its cross-process reduction; ``clip`` is
    grpo_loss's per-token clip indicators."""
    mode = "train" if trainer.model.training else "eval"
    log = trainer._metrics[mode]
    acc = trainer.accelerator
    maskf = mask.float()
    n_tok = maskf.sum()

    def global_mean(local_sum, local_count) -> float:
        totals = acc.reduce(torch.stack([local_sum.float(), local_count.float()]), reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    if beta != 0.0:
        log["kl"].append(global_mean(metrics["kl"] * n_tok, n_tok))
    log["entropy"].append(global_mean((entropies.detach() * maskf).sum(), n_tok))

    # TRL tests the clip conditions on the delta-capped ratio, which exceeds 1 + epsilon_high only if delta
    # does; grpo_loss's indicators (and clip fractions) are on the uncapped ratio.
    delta = getattr(trainer.args, "delta", None)
    high_never = delta is not None and delta <= 1 + trainer.epsilon_high
    low = (clip == -1).float()
    high = torch.zeros_like(low) if high_never else (clip == 1).float()
    if level == "token":
        low_sum = metrics["clip_frac_low"] * n_tok
        high_sum = torch.zeros_like(low_sum) if high_never else metrics["clip_frac_high"] * n_tok
        region_sum = low_sum if high_never else metrics["clip_frac"] * n_tok
        log["clip_ratio/low_mean"].append(global_mean(low_sum, n_tok))
        log["clip_ratio/high_mean"].append(global_mean(high_sum, n_tok))
        log["clip_ratio/region_mean"].append(global_mean(region_sum, n_tok))
        low_rows = (low * maskf).sum(1) / maskf.sum(1)  # NaN for empty rows, skipped by the min/max
        high_rows = (high * maskf).sum(1) / maskf.sum(1)
    else:
        # One ratio per sequence (its indicator on each of its tokens): TRL averages the indicators over all
        # sequences, unweighted by length; an empty row has ratio 1.
        low_rows, high_rows = low.amax(1), high.amax(1)
        rows = torch.tensor(float(low.shape[0]), device=low.device)
        log["clip_ratio/low_mean"].append(global_mean(low_rows.sum(), rows))
        log["clip_ratio/high_mean"].append(global_mean(high_rows.sum(), rows))
        log["clip_ratio/region_mean"].append(global_mean(torch.maximum(low_rows, high_rows).sum(), rows))
    log["clip_ratio/low_min"].append(_nan_extreme(acc.gather(low_rows), largest=False))
    log["clip_ratio/high_max"].append(_nan_extreme(acc.gather(high_rows), largest=True))


def _rlir_compute_loss(trainer, model, inputs, original):
    completion_ids = inputs["completion_ids"]
    input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
    attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    mask = _loss_mask(inputs)
    extra = {name: inputs[name] for name in _MULTIMODAL_INPUTS if inputs.get(name) is not None}
    logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
        model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True, compute_aux_loss=False,
        **extra,
    )
    if logps.dtype not in (torch.float32, torch.float16, torch.bfloat16):  # e.g. a float64 model
        _warn_fallback(LOSS_METHOD, f"{logps.dtype} log-probs")
        return original(trainer, model, inputs)

    loss_type, level, beta = trainer.loss_type, trainer.importance_sampling_level, float(trainer.beta)
    advantages = inputs["advantages"]
    old_logps = inputs.get("old_per_token_logps")  # None: this policy sampled the batch (ratio 1)
    ref_logps = inputs["ref_per_token_logps"] if beta != 0.0 else None
    valid = mask if mask.dtype == torch.bool else mask != 0
    delta = getattr(trainer.args, "delta", None)
    loss, metrics, clip = grpo_loss(
        logps, old_logps, advantages, valid, ref_logps,
        eps_low=float(trainer.epsilon_low), eps_high=float(trainer.epsilon_high),
        delta=None if delta is None else float(delta), beta=beta, loss_agg=LOSS_AGG[loss_type], is_level=level,
        normaliser=_trl_normaliser(trainer, inputs, loss_type, valid, trainer.model.training), return_clip=True,
    )
    with torch.no_grad():
        _log_loss_metrics(trainer, metrics, clip, mask, entropies, level, beta)
    return loss


def _make_loss_method(original: Callable) -> Callable:
    @functools.wraps(original)
    def _compute_loss(self, model, inputs):
        option = _unsupported_loss_option(self, inputs)
        if option is not None:
            _warn_fallback(LOSS_METHOD, option)
            return original(self, model, inputs)
        return _rlir_compute_loss(self, model, inputs, original)

    return _compute_loss


# --------------------------------------------------------------------------------------------------
# patching

_FACTORIES = {LOGPROBS_METHOD: _make_logprobs_method, LOSS_METHOD: _make_loss_method}


def _grpo_trainer_class():
    try:
        import trl
    except ImportError as err:
        raise ImportError("rlir.integrations.trl needs TRL: pip install 'rlir[trl]'") from err
    from packaging.version import Version

    version = Version(trl.__version__)
    if version < Version(MIN_TRL_VERSION):
        raise RuntimeError(
            f"rlir.integrations.trl supports TRL >= {MIN_TRL_VERSION} (found {trl.__version__}): older "
            "GRPOTrainers normalise their losses differently. Upgrade with pip install -U 'trl>="
            f"{MIN_TRL_VERSION}'."
        )
    if f"{version.major}.{version.minor}" not in VERIFIED_TRL_SERIES:
        _warn_once(
            f"version:{version}",
            f"rlir.integrations.trl was verified against TRL {VERIFIED_TRL_SERIES[0]} to "
            f"{VERIFIED_TRL_SERIES[-1]}; TRL {trl.__version__} may have changed GRPOTrainer's loss. Check one "
            "batch against TRL's own path (tests/integrations/test_trl.py does) before relying on it.",
            UserWarning,
        )
    from trl import GRPOTrainer

    return GRPOTrainer


def _replacement_info(fn) -> Optional[dict]:
    fn = getattr(fn, "__func__", fn)  # bound method (instance patch) -> function
    return getattr(fn, _MARK, None)


def _trl_method(base, name: str):
    """TRL's own GRPOTrainer.<name>, even while GRPOTrainer itself is patched."""
    fn = base.__dict__[name]
    info = _replacement_info(fn)
    return info["original"] if info else fn


class GRPOTrainerPatch:
    """What :func:`patch_grpo_trainer` did; ``unpatch()`` (or leaving a ``with`` block) undoes it."""

    def __init__(self, target, methods: List[str], skipped: Dict[str, str]):
        self.target = target
        self.methods = methods  # replaced by this call
        self.skipped = skipped  # name -> why it was left alone

    def unpatch(self) -> None:
        for name in self.methods:
            _restore(self.target, name)
        self.methods = []

    def __enter__(self) -> "GRPOTrainerPatch":
        return self

    def __exit__(self, *exc) -> None:
        self.unpatch()

    def __repr__(self) -> str:
        what = self.target.__name__ if isinstance(self.target, type) else type(self.target).__name__ + " instance"
        return f"GRPOTrainerPatch({what}, methods={self.methods}, skipped={self.skipped})"


def _restore(target, name: str) -> bool:
    current = vars(target).get(name)
    info = _replacement_info(current) if current is not None else None
    if info is None:
        return False
    if info["previous"] is _MISSING:
        if isinstance(target, type):
            delattr(target, name)
        else:
            del target.__dict__[name]
    else:
        if isinstance(target, type):
            setattr(target, name, info["previous"])
        else:
            target.__dict__[name] = info["previous"]
    return True


def patch_grpo_trainer(trainer_or_class=None, *, logprobs: bool = True, loss: bool = True) -> GRPOTrainerPatch:
    """Make TRL's GRPOTrainer compute per-token log-probs and the GRPO loss with rlir's kernels.

    trainer_or_class: ``GRPOTrainer`` (the default when None) or a subclass, to patch every trainer of
    that class, or one trainer instance. ``logprobs`` / ``loss`` choose the methods to replace. Idempotent:
    methods already patched are left as they are. A method that the target overrides itself (not TRL's
    own) is left alone with a warning, since replacing it would drop that code.

    Returns a :class:`GRPOTrainerPatch`: call ``.unpatch()`` or use it as a context manager.
    """
    base = _grpo_trainer_class()
    target = base if trainer_or_class is None else trainer_or_class
    is_class = isinstance(target, type)
    if not (issubclass(target, base) if is_class else isinstance(target, base)):
        raise TypeError(f"expected trl.GRPOTrainer, a subclass or an instance, got {target!r}")
    names = [name for name, wanted in ((LOGPROBS_METHOD, logprobs), (LOSS_METHOD, loss)) if wanted]
    replaced: List[str] = []
    skipped: Dict[str, str] = {}
    for name in names:
        owner = target if is_class else type(target)
        current = vars(target).get(name) if not is_class and name in vars(target) else getattr(owner, name)
        if _replacement_info(current) is not None:
            skipped[name] = "already patched"
            continue
        current = getattr(current, "__func__", current)
        if current is not _trl_method(base, name):
            skipped[name] = f"{owner.__name__} overrides it"
            warnings.warn(
                f"rlir.integrations.trl: {owner.__name__}.{name} is not TRL's own method; it is left as it is "
                "(replacing it would drop its code). Patch GRPOTrainer itself if the override only delegates "
                "to it.", UserWarning, stacklevel=2,
            )
            continue
        replacement = _FACTORIES[name](current)
        setattr(replacement, _MARK, {"original": current, "previous": vars(target).get(name, _MISSING)})
        if is_class:
            setattr(target, name, replacement)
        else:
            target.__dict__[name] = types.MethodType(replacement, target)
        replaced.append(name)
    return GRPOTrainerPatch(target, replaced, skipped)


def unpatch_grpo_trainer(trainer_or_class=None) -> bool:
    """Undo :func:`patch_grpo_trainer` on this class or instance (GRPOTrainer when None). True if it was patched."""
    target = _grpo_trainer_class() if trainer_or_class is None else trainer_or_class
    restored = [_restore(target, name) for name in (LOGPROBS_METHOD, LOSS_METHOD)]
    return any(restored)


def is_patched(trainer_or_class=None, method: str = LOSS_METHOD) -> bool:
    """Whether ``method`` of this class or instance (GRPOTrainer when None) currently runs rlir's version."""
    target = _grpo_trainer_class() if trainer_or_class is None else trainer_or_class
    return _replacement_info(getattr(target, method, None)) is not None
