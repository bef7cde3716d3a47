"""VQ frame tokenizer: RGB frames of any size (a multiple of the patch size, square or not) <-> a grid of
discrete codes (64x64 frames -> 8x8 codes by default), the vocabulary of the autoregressive world model.

Both halves work at the code-grid resolution: the encoder embeds each patch_size x patch_size patch
linearly (a strided conv, as in a ViT) and mixes neighbouring patches with ConvNeXt blocks; the decoder
mirrors it and emits each patch's pixels from one linear layer (pixel shuffle). A learned position
embedding on both sides tells a patch where it sits, which matters for Crafter at 64x64: its 7-pixel tiles
fall at a different offset inside every 8-pixel patch. At 72x72 a tile is exactly one 8-pixel patch.

The quantiser is a k-means codebook trained by exponential moving averages (van den Oord et al. 2017,
appendix), with a straight-through estimator, a commitment loss, initialisation from the first batch,
and restarts of codes unused for a while at the batch vectors it fits worst, so the codebook stays in use.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from rlir.kernels import checking_values

from .arguments import check_int, frame_size_pair


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantiser with an EMA k-means codebook.

    In training mode each call moves every code towards the mean of the vectors assigned to it (an
    exponential moving average with decay ``decay``) and restarts the codes that no vector chose in the
    last ``dead_code_patience`` calls at vectors of the batch. The first training call initialises the
    codebook from the batch. The codebook is a buffer, so optimisers never touch it.
    """

    def __init__(self, codebook_size: int, dim: int, decay: float = 0.99, commitment: float = 0.25,
                 dead_code_patience: int = 25, eps: float = 1e-5):
        super().__init__()
        self.codebook_size, self.dim = codebook_size, dim
        self.decay, self.commitment = decay, commitment
        self.dead_code_patience, self.eps = dead_code_patience, eps
        codebook = torch.randn(codebook_size, dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("cluster_size", torch.ones(codebook_size))  # EMA of assignments per step
        self.register_buffer("code_sum", codebook.clone())  # EMA of the sum of assigned vectors
        self.register_buffer("idle_steps", torch.zeros(codebook_size, dtype=torch.int64))  # calls since last chosen
        self.register_buffer("initialized", torch.tensor(False))
        self.restarts = 0  # codes restarted since construction (a training statistic, not saved)

    def distances(self, flat: torch.Tensor) -> torch.Tensor:
        """Squared distances [N, K] of the rows of ``flat`` [N, dim] to every code."""
        codebook = self.codebook.to(flat.dtype)
        return flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.T + codebook.pow(2).sum(1)

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of ``flat`` [N, dim]."""
        return self.distances(flat).argmin(1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes of any shape -> their vectors [..., dim]."""
        return F.embedding(codes, self.codebook)

    def forward(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """flat [N, dim] -> (quantised with straight-through gradient [N, dim], commitment loss, codes [N])."""
        if self.training and not self.initialized:
            self._restart(torch.arange(self.codebook_size, device=flat.device), flat.detach().float())
            self.initialized.fill_(True)
        error, codes = self.distances(flat.detach()).min(1)
        quantized = self.lookup(codes).to(flat.dtype)
        if self.training:
            self._update(flat.detach().float(), codes, error.float())
        loss = self.commitment * F.mse_loss(flat, quantized.detach())
        return flat + (quantized - flat).detach(), loss, codes

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, codes: torch.Tensor, error: torch.Tensor) -> None:
        assigned = F.one_hot(codes, self.codebook_size).to(flat.dtype)  # [N, K]
        self.cluster_size.lerp_(assigned.sum(0), 1 - self.decay)
        self.code_sum.lerp_(assigned.T @ flat, 1 - self.decay)
        # Laplace smoothing keeps a rarely used code's count, and so its division, away from zero.
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        self.codebook.copy_(self.code_sum / smoothed.unsqueeze(1))
        self.idle_steps.add_(1).masked_fill_(assigned.sum(0) > 0, 0)
        dead = (self.idle_steps >= self.dead_code_patience).nonzero().squeeze(1)
        if len(dead):
            self._restart(dead, flat, weights=error.clamp_min(0) + 1e-12)

    def _restart(self, dead: torch.Tensor, flat: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Move codes ``dead`` onto rows of ``flat``, each starting at one assignment per call. Rows are drawn
        uniformly, or in proportion to ``weights`` (the squared quantisation error: k-means++ seeding puts the
        new codes where the codebook fits the data worst)."""
        if weights is None:
            weights = torch.ones(len(flat), device=flat.device)
        rows = torch.multinomial(weights, len(dead), replacement=len(dead) > len(flat))
        self.codebook[dead] = flat[rows]
        self.code_sum[dead] = flat[rows]
        self.cluster_size[dead] = 1.0
        self.idle_steps[dead] = 0
        self.restarts += len(dead)


class ConvNeXtBlock(nn.Module):
    """Residual ConvNeXt-style block: a depthwise 3x3 convolution mixes neighbouring patches, then a
    per-patch MLP (expansion 2). Cheaper than two dense 3x3 convolutions for the same width."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels), nn.GroupNorm(1, channels),
            nn.Conv2d(channels, 2 * channels, 1), nn.GELU(), nn.Conv2d(2 * channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class VQTokenizer(ModelMixin, ConfigMixin):
    """Frames [..., 3, H, W] <-> codes int64 [..., H // patch_size, W // patch_size].

    ``image_size`` is the frame size (H, W): one int for square frames or [height, width].

    ``encode`` takes uint8 frames (0..255) or float frames in [0, 1]; ``decode`` returns float frames in
    [0, 1] (``to_uint8`` rounds them); ``forward`` is the training pass.
    """

    @register_to_config
    def __init__(
        self,
        image_size: int | list[int] = 64,
        patch_size: int = 8,
        in_channels: int = 3,
        hidden_channels: int = 192,
        encoder_blocks: int = 1,
        decoder_blocks: int = 2,
        code_dim: int = 32,
        codebook_size: int = 512,
        commitment: float = 0.25,
        ema_decay: float = 0.95,
        dead_code_patience: int = 25,
    ):
        super().__init__()
        self.frame_size = frame_size_pair("image_size", image_size)
        for name, value in (("patch_size", patch_size), ("in_channels", in_channels),
                            ("code_dim", code_dim), ("codebook_size", codebook_size)):
            check_int(name, value)
        check_int("hidden_channels", hidden_channels, 8)
        if hidden_channels % 8:
            raise ValueError(f"hidden_channels must be a multiple of 8 (GroupNorm groups), got {hidden_channels}")
        check_int("dead_code_patience", dead_code_patience)
        check_int("encoder_blocks", encoder_blocks, 0)
        check_int("decoder_blocks", decoder_blocks, 0)
        if any(side % patch_size for side in self.frame_size):
            raise ValueError(f"image_size {list(self.frame_size)} must be a multiple of patch_size ({patch_size})")
        if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) or not 0 <= ema_decay < 1:
            raise ValueError(f"ema_decay must be a number in [0, 1), got {ema_decay!r}")
        if isinstance(commitment, bool) or not isinstance(commitment, (int, float)) or commitment < 0:
            raise ValueError(f"commitment must be a number >= 0, got {commitment!r}")

        self.code_grid = (self.frame_size[0] // patch_size, self.frame_size[1] // patch_size)
        self.encoder_in = nn.Conv2d(in_channels, hidden_channels, patch_size, stride=patch_size)
        self.encoder_position = nn.Parameter(torch.zeros(1, hidden_channels, *self.code_grid))
        self.encoder = nn.Sequential(
            *[ConvNeXtBlock(hidden_channels) for _ in range(encoder_blocks)],
            nn.GroupNorm(8, hidden_channels), nn.SiLU(), nn.Conv2d(hidden_channels, code_dim, 1),
        )
        self.quantizer = VectorQuantizer(codebook_size, code_dim, ema_decay, commitment, dead_code_patience)
        self.decoder_in = nn.Conv2d(code_dim, hidden_channels, 1)
        self.decoder_position = nn.Parameter(torch.zeros(1, hidden_channels, *self.code_grid))
        self.decoder = nn.Sequential(
            *[ConvNeXtBlock(hidden_channels) for _ in range(decoder_blocks)],
            nn.GroupNorm(8, hidden_channels), nn.SiLU(),
            nn.Conv2d(hidden_channels, in_channels * patch_size**2, 1), nn.PixelShuffle(patch_size),
        )
        nn.init.normal_(self.encoder_position, std=0.02)
        nn.init.normal_(self.decoder_position, std=0.02)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def tokens_per_frame(self) -> int:
        return self.code_grid[0] * self.code_grid[1]

    def _frames_to_input(self, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Frames [..., C, H, W] (uint8, or float in [0, 1]) -> (model input [N, C, H, W] in [-1, 1], leading shape)."""
        c, (h, w) = self.config.in_channels, self.frame_size
        if not isinstance(frames, torch.Tensor) or frames.ndim < 3 or tuple(frames.shape[-3:]) != (c, h, w):
            raise ValueError(f"frames must be a tensor of shape [..., {c}, {h}, {w}], got "
                             f"{tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__}")
        if frames.dtype == torch.uint8:
            x = frames.to(self.device, self.dtype) / 255.0
        elif frames.is_floating_point():
            x = frames.to(self.device, self.dtype)
        else:
            raise ValueError(f"frames must be uint8 (0..255) or floating point in [0, 1], got {frames.dtype}")
        return x.reshape(-1, c, h, w) * 2 - 1, tuple(frames.shape[:-3])

    def _encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] in [-1, 1] -> latents [N * rows * cols, code_dim] (row-major over the code grid)."""
        h = self.encoder(self.encoder_in(x) + self.encoder_position)
        return h.permute(0, 2, 3, 1).reshape(-1, self.config.code_dim)

    def _decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """[N * rows * cols, code_dim] -> frames [N, C, H, W] in [0, 1], unclamped."""
        z = latents.reshape(-1, *self.code_grid, self.config.code_dim).permute(0, 3, 1, 2)
        return (self.decoder(self.decoder_in(z) + self.decoder_position) + 1) / 2

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames [..., 3, H, W] (uint8, or float in [0, 1]) -> codes int64 [..., rows, cols]."""
        x, leading = self._frames_to_input(frames)
        codes = self.quantizer.nearest(self._encode_latents(x))
        return codes.reshape(*leading, *self.code_grid)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes int [..., rows, cols] -> frames float [..., 3, H, W] in [0, 1]."""
        (rows, cols), k = self.code_grid, self.codebook_size
        if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.is_complex() \
                or codes.dtype == torch.bool or codes.ndim < 2 or tuple(codes.shape[-2:]) != (rows, cols):
            raise ValueError(f"codes must be an integer tensor of shape [..., {rows}, {cols}], got "
                             f"{getattr(codes, 'dtype', type(codes).__name__)} {tuple(getattr(codes, 'shape', ()))}")
        if codes.numel() and checking_values() and (codes.min() < 0 or codes.max() >= k):  # one sync
            raise ValueError(f"codes must be in [0, {k}), got values in [{int(codes.min())}, {int(codes.max())}]")
        latents = self.quantizer.lookup(codes.to(self.device, torch.int64).reshape(-1)).to(self.dtype)
        frames = self._decode_latents(latents).clamp(0, 1)
        return frames.reshape(*codes.shape[:-2], *frames.shape[1:])

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """Flat per-frame codes [..., tokens_per_frame] (what the world model emits) -> uint8 frames
        [..., 3, H, W], decoded ``batch`` frames at a time to bound memory."""
        grid = tokens.reshape(-1, *self.code_grid)
        frames = torch.cat([self.to_uint8(self.decode(grid[i:i + batch])) for i in range(0, len(grid), batch)])
        return frames.reshape(*tokens.shape[:-1], *frames.shape[1:])

    @staticmethod
    def to_uint8(frames: torch.Tensor) -> torch.Tensor:
        """Float frames in [0, 1] -> uint8 0..255 (rounded)."""
        return (frames.float() * 255).round().clamp(0, 255).to(torch.uint8)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: frames [..., 3, H, W] -> (reconstruction float [..., 3, H, W] in about [0, 1],
        unclamped so the loss has gradients everywhere; VQ commitment loss (scalar); codes int64 [..., rows, cols])."""
        x, leading = self._frames_to_input(frames)
        quantized, vq_loss, codes = self.quantizer(self._encode_latents(x))
        recon = self._decode_latents(quantized)
        return recon.reshape(*leading, *recon.shape[1:]), vq_loss, codes.reshape(*leading, *self.code_grid)
