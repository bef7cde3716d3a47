"""VPT-style inverse dynamics model (IDM): frames -> the action between every pair of consecutive frames.

A transition t (frame t-1 -> frame t, t = 1..T) is encoded by a CNN that sees both frames stacked with
their difference, so it can tell the scroll direction (Crafter's camera follows the player) and the
player's new facing. A bidirectional transformer then mixes the transitions of a window, so the
prediction for transition t may use frames before and after it (the IDM is non-causal), and one linear
head per action group gives the logits. The output lines up with actions [N, T, H] for
``rlir.kernels.idm_reward``.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from rlir.models.arguments import check_int, frame_size_pair
from rlir.models.attention import attention


def _int_list(name: str, values, minimum: int = 1) -> list[int]:
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{name} must be a non-empty list of ints, got {values!r}")
    return [check_int(f"{name} entries", v, minimum) for v in values]


class TransitionEncoder(nn.Module):
    """[M, 9, H, W] (previous frame, next frame, their difference) -> [M, width].

    Stride-2 convolutions down to H/2^L x W/2^L, then a linear layer over the flattened map: flattening
    (not pooling) keeps where things are, and the player sits at the centre of the view. The BatchNorms
    matter: on Crafter this CNN starts telling moves apart after ~50 steps with them, and plateaus for
    hundreds of steps (depending on the seed) with GroupNorm or no normalisation.
    """

    def __init__(self, frame_size: tuple[int, int], channels: Sequence[int], width: int):
        super().__init__()
        layers, previous = [], 9
        for c in channels:
            layers += [nn.Conv2d(previous, c, kernel_size=4, stride=2, padding=1), nn.BatchNorm2d(c), nn.GELU()]
            previous = c
        self.convs = nn.Sequential(*layers)
        h, w = frame_size[0] >> len(channels), frame_size[1] >> len(channels)
        self.project = nn.Linear(previous * h * w, width)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.project(self.convs(pairs).flatten(1))


class Block(nn.Module):
    """Pre-norm bidirectional self-attention + GELU MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attention_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = attention(q, k, v, causal=False)
        x = x + self.out(y.transpose(1, 2).reshape(b, s, d))
        return x + self.mlp(self.mlp_norm(x))


class InverseDynamicsModel(ModelMixin, ConfigMixin):
    """frames [N, T+1, 3, H, W] -> list of per-head logits [N, T, C_h]; logits[h][:, t-1] is head h's
    prediction of the action that moved frame t-1 to frame t.

    Config: head_sizes (classes per action head, e.g. [17] for Crafter), frame_size ([H, W] or one int),
    window (frames the transformer sees at once; longer videos are read in consecutive windows),
    width (embedding size), depth (transformer blocks), heads (attention heads, divides width),
    channels (the CNN's conv channels; each conv halves the frame, so H and W must be >= 2^len),
    ignore_box ([top, left, height, width] in px at frame_size, or None): a region the IDM never sees, grey in both
    frames. Crafter's shipped reward IDM ignores the player's tile: the sprite turns even when a move is blocked,
    so an IDM that reads it can be fooled by a world model that turns the sprite and leaves the world still.
    Frames are uint8 in [0, 255] or floats in [0, 1], of any size: frames not at frame_size are resized to it
    (so a world model and an IDM made at different sizes work together). ``save_pretrained``/``from_pretrained`` write and read
    config.json + safetensors; ``from_pretrained`` returns the model in eval mode, which inference needs
    (the CNN's BatchNorms use their running statistics there).
    """

    @register_to_config
    def __init__(self, head_sizes: Sequence[int] = (17,), frame_size: Union[int, Sequence[int]] = (64, 64),
                 window: int = 16, width: int = 128, depth: int = 2, heads: int = 4,
                 channels: Sequence[int] = (16, 32, 32), ignore_box: Sequence[int] | None = None):
        super().__init__()
        self.head_sizes = _int_list("head_sizes", head_sizes, minimum=2)
        self.frame_size = frame_size_pair("frame_size", frame_size)
        check_int("window", window, minimum=2)
        check_int("width", width)
        check_int("depth", depth, minimum=0)
        check_int("heads", heads)
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        channels = _int_list("channels", channels)
        if min(self.frame_size) >> len(channels) < 1:
            raise ValueError(f"frame_size {list(self.frame_size)} is too small for {len(channels)} stride-2 convs "
                             f"(channels {channels}): each side must be >= {2 ** len(channels)}")

        if ignore_box is not None:
            box = _int_list("ignore_box", ignore_box, minimum=0)
            top, left, height, width_px = box if len(box) == 4 else (0, 0, 0, 0)
            if not (height and width_px and top + height <= self.frame_size[0]
                    and left + width_px <= self.frame_size[1]):
                raise ValueError(f"ignore_box must be [top, left, height, width] inside frame_size "
                                 f"{list(self.frame_size)}, got {list(ignore_box)}")
        self.ignore_box = None if ignore_box is None else (slice(top, top + height), slice(left, left + width_px))
        self.encoder = TransitionEncoder(self.frame_size, channels, width)
        self.position = nn.Parameter(torch.zeros(window - 1, width))
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.action_heads = nn.ModuleList(nn.Linear(width, size) for size in self.head_sizes)
        nn.init.normal_(self.position, std=0.02)

    def _pairs(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [N, T+1, 3, H, W] -> [N*T, 9, H, W] of (previous, next, next - previous), centred."""
        dtype = self.position.dtype
        x = frames.to(dtype) / 255 if frames.dtype == torch.uint8 else frames.to(dtype)
        x = self._resize(x)
        if self.ignore_box is not None:
            x = x.clone()
            x[..., self.ignore_box[0], self.ignore_box[1]] = 0.5  # grey: 0 once centred, and 0 in the difference
        previous, following = x[:, :-1], x[:, 1:]
        pairs = torch.cat([previous - 0.5, following - 0.5, following - previous], dim=2)
        return pairs.flatten(0, 1)

    def _mix(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, S, width] with S <= window - 1 -> [B, S, width] through the transformer."""
        x = tokens + self.position[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        self._check_frames(frames)
        n, t = frames.shape[0], frames.shape[1] - 1
        tokens = self.encoder(self._pairs(frames)).view(n, t, -1)
        span = self.config.window - 1
        if t <= span:
            hidden = self._mix(tokens)
        else:
            # Consecutive windows of `span` transitions, the last one aligned to the end (overlapping its
            # predecessor, whose overlapping outputs it overwrites), all in one transformer batch.
            starts = list(range(0, t - span, span)) + [t - span]
            mixed = self._mix(torch.cat([tokens[:, s : s + span] for s in starts]))
            hidden = tokens.new_empty(tokens.shape)
            for i, s in enumerate(starts):
                hidden[:, s : s + span] = mixed[i * n : (i + 1) * n]
        return [head(hidden) for head in self.action_heads]

    def _check_frames(self, frames) -> None:
        if not isinstance(frames, torch.Tensor) or frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be a [N, T+1, 3, H, W] tensor, got "
                             f"{tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__}")
        if frames.dtype != torch.uint8 and not frames.is_floating_point():
            raise ValueError(f"frames must be uint8 in [0, 255] or float in [0, 1], got {frames.dtype}")
        if frames.shape[1] < 2:
            raise ValueError(f"frames needs at least 2 frames (1 transition) per video, got {frames.shape[1]}")

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        """Float frames [N, T+1, 3, H, W] -> [N, T+1, 3, *frame_size]: any world model's frames can be scored
        (bilinear with antialiasing, as recordings are resized on load; a no-op at the IDM's own size)."""
        if tuple(x.shape[3:]) == self.frame_size:
            return x
        n, t = x.shape[:2]
        x = F.interpolate(x.flatten(0, 1), size=self.frame_size, mode="bilinear", antialias=True, align_corners=False)
        return x.view(n, t, *x.shape[1:])

    @torch.no_grad()
    def predict(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [N, T+1, 3, H, W] -> predicted actions int64 [N, T, H] (argmax of every head)."""
        return torch.stack([logits.argmax(-1) for logits in self(frames)], dim=-1)
