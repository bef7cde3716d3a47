"""The optimiser setup the trainers share: AdamW with weight decay on matrices only (not on norms, biases or
gains), its fused kernel where the parameters allow it, a warmup-then-constant-or-cosine schedule, and the
clipped step that skips a non-finite gradient."""
from __future__ import annotations

import math
from typing import Callable, Iterable, List, Optional, Tuple

import torch


def adamw_decaying_matrices(params: Iterable[torch.nn.Parameter], *, lr: float, weight_decay: float,
                            betas: Tuple[float, float], eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW with ``weight_decay`` on parameters of two or more dims and none on the rest; empty groups are
    left out. Raises ValueError when ``params`` is empty."""
    decay, no_decay = [], []
    for p in params:
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("no trainable parameters")
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)


def warmup_schedule(warmup: int, total: int, schedule: str = "constant", floor: float = 0.0) -> Callable[[int], float]:
    """The learning-rate factor after ``u`` of ``total`` updates (a LambdaLR lambda): linear warmup over
    ``warmup`` updates, then 1 ("constant") or a cosine down to ``floor`` at the last update ("cosine")."""

    def factor(u: int) -> float:
        if u < warmup:
            return (u + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (u - warmup) / max(1, total - warmup - 1))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def fused_adamw_supported(params: List[torch.Tensor]) -> bool:
    """Whether AdamW's fused kernel takes these parameters (floating point, on a device it supports)."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    devices = _get_fused_kernels_supported_devices()
    return bool(params) and all(p.device.type in devices and p.is_floating_point() for p in params)


def use_fused_adamw(optimizer: torch.optim.Optimizer) -> None:
    """Switch an AdamW to its fused kernel (which takes ``found_inf``: a non-finite gradient skips the update on
    the device), with its step counters on the parameters' device as that kernel keeps them."""
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, None
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and "step" in state:
                state["step"] = state["step"].to(p.device, torch.float32)


def clip_and_step(optimizer: torch.optim.Optimizer, params: List[torch.Tensor], max_norm: Optional[float],
                  fused: bool) -> torch.Tensor:
    """Clip the gradient norm of ``params`` to ``max_norm`` (None: no clipping), then step unless that norm is
    non-finite; returns the norm (under FSDP its local value: the norm is a replicated DTensor). The fused AdamW
    kernel (``fused``) skips the update on the device when its ``found_inf`` is 1 (as under a GradScaler), so
    this reads nothing back; other optimizers fall back to a host check."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else float("inf"))
    local = norm.to_local() if hasattr(norm, "to_local") else norm
    if fused:
        optimizer.found_inf = (~torch.isfinite(norm)).float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif math.isfinite(local.item()):
        optimizer.step()
    return local
