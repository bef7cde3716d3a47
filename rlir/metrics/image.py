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


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x**2 / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(original: torch.Tensor, reconstruction: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-frame SSIM (Wang et al. 2004) of uint8 frames [N, C, H, W]: a Gaussian window (11, sigma 1.5),
    K1 = 0.01, K2 = 0.03, L = 255, computed per channel over the valid (unpadded) window positions and averaged.
    1 for identical frames; the frame size must be at least the window."""
    if original.shape != reconstruction.shape or original.dtype != torch.uint8 or reconstruction.dtype != torch.uint8:
        raise ValueError(f"original and reconstruction must be uint8 tensors of one shape, got "
                         f"{original.dtype} {tuple(original.shape)} and {reconstruction.dtype} "
                         f"{tuple(reconstruction.shape)}")
    if original.ndim != 4 or min(original.shape[-2:]) < window:
        raise ValueError(f"frames must be [N, C, H, W] with H, W >= window={window}, got {tuple(original.shape)}")
    c = original.shape[1]
    kernel = _gaussian_window(window, sigma).to(original.device).expand(c, 1, window, window)
    x, y = original.double(), reconstruction.double()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(t, kernel, groups=c)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return ssim_map.flatten(1).mean(1)
