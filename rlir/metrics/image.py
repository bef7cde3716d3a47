"""Image-quality metrics of generated frames against real ones."""
from __future__ import annotations

import torch


def psnr(original: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR in dB of uint8 frames [N, ...] against 255: 10 log10(255^2 / MSE). A frame that is
    reproduced exactly scores 10 log10(255^2 / 1e-10) (148 dB), not inf, so means stay finite."""
    if original.shape != reconstruction.shape or original.dtype != torch.uint8 or reconstruction.dtype != torch.uint8:
        raise ValueError(f"original and reconstruction must be uint8 tensors of one shape, got "
                         f"{original.dtype} {tuple(original.shape)} and {reconstruction.dtype} "
                         f"{tuple(reconstruction.shape)}")
    error = (original.double() - reconstruction.double()).pow(2).reshape(len(original), -1).mean(1)
    return 10 * torch.log10(255.0**2 / error.clamp_min(1e-10))
