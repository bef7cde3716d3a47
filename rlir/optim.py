"""The one AdamW setup the trainers share: weight decay on matrices only (not on norms, biases or gains)."""
from __future__ import annotations

from typing import Iterable, Tuple

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
