"""The IDM reward path's one scoring call: an inverse dynamics model over a batch of videos, in chunks.

Training (the reward), in-training evaluation and ``rlir eval`` all score videos through ``idm_logits``;
``rlir.kernels.idm_reward`` / ``idm_advantage`` turn its logits into rewards. Any callable with the IDM's
interface works: uint8 or float videos [N, n+1, 3, h, w] -> a list of per-head logits [N, n, C_h] (the
built-in ``InverseDynamicsModel`` resizes frames to its own input size, so any world model's frames fit).
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch


@torch.no_grad()
def idm_logits(idm: Callable[[torch.Tensor], List[torch.Tensor]], videos: torch.Tensor,
               batch_size: Optional[int] = None) -> List[torch.Tensor]:
    """fp32 per-head logits [N, n, C_h] of ``videos`` [N, n+1, 3, h, w], ``batch_size`` videos per IDM call
    (None: all in one call). Chunking bounds the IDM's activation memory and does not change the result."""
    if batch_size is None or batch_size >= videos.shape[0]:
        return [x.float() for x in idm(videos)]
    parts = [idm(videos[i:i + batch_size]) for i in range(0, videos.shape[0], batch_size)]
    return [torch.cat([p[h] for p in parts]).float() for h in range(len(parts[0]))]
