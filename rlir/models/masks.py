"""Frame-causal attention masks as index arithmetic (the attention-gym way), not as [S, Skv] tensors.

A video sequence is a row of frame slots of P tokens each: token i sits in slot i // P. ``FrameCausal`` gives each
key slot the video frame it holds (``times``) and whether it is a noisy slot, and one rule decides everything:

    query slot a may attend key slot b  iff  b == a  or  (b is clean and times[b] < times[a])

so a clean frame sees itself and every earlier clean frame, and a noisy slot (a frame being denoised) sees
itself and the clean frames strictly before its frame, never another noisy slot. The queries are the last S of
the Skv tokens (bottom-right aligned, like ``attention(causal=True)``), so a KV-cached chunk of frames uses the
same spec as the whole sequence. ``mask_mod`` is that rule in flex_attention's form (two divisions by P and two
lookups in per-slot tables of a few entries: flex builds its BlockMask from it and skips whole blocks);
``dense`` is the same rule evaluated on every (query, key) pair, for the backends that take a boolean mask.
Specs are hashable, so ``rlir.models.attention`` caches one BlockMask (or dense mask) per (spec, shape, device).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Tuple, Union

import torch


def _int_list(name: str, values) -> list:
    if isinstance(values, torch.Tensor):
        values = values.tolist()  # pass host (CPU) indices: a CUDA tensor would sync here
    values = list(values)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise ValueError(f"{name} must hold non-negative ints, got {values}")
    return values


@dataclass(frozen=True)
class FrameCausal:
    """Frame-causal mask over key slots of ``tokens_per_frame`` tokens: slot k holds video frame ``times[k]``,
    a noisy (being denoised) slot where ``noisy[k]``. Build it with ``clean`` or ``teacher_forced``."""

    tokens_per_frame: int
    times: Tuple[int, ...]
    noisy: Tuple[bool, ...]

    def __post_init__(self):
        p = self.tokens_per_frame
        if isinstance(p, bool) or not isinstance(p, int) or p <= 0:
            raise ValueError(f"tokens_per_frame must be a positive int, got {p!r}")
        object.__setattr__(self, "times", tuple(_int_list("times", self.times)))
        object.__setattr__(self, "noisy", tuple(bool(v) for v in self.noisy))
        if not self.times or len(self.times) != len(self.noisy):
            raise ValueError(f"times and noisy must be non-empty and of one length, got {len(self.times)} and "
                             f"{len(self.noisy)}")

    @classmethod
    def clean(cls, tokens_per_frame: int, frames: int) -> "FrameCausal":
        """Clean frames 0..frames-1: query frame i sees key frames j <= i, i.e. ``q_idx // P >= kv_idx // P``
        (with the queries aligned to the last keys: a chunk of new frames after cached ones)."""
        (frames,) = _int_list("frames", [frames])
        return cls(tokens_per_frame, tuple(range(frames)), (False,) * frames)

    @classmethod
    def teacher_forced(cls, tokens_per_frame: int, clean_frames: int,
                       noisy_index: Union[Sequence[int], torch.Tensor]) -> "FrameCausal":
        """The DiT's training layout [clean frames 0..Tc-1 ; noisy slots of frames noisy_index]: clean i sees
        clean j <= i; the noisy slot of frame k sees clean j < k and itself only (``frame_causal_mask``)."""
        (clean_frames,) = _int_list("clean_frames", [clean_frames])
        noisy_index = _int_list("noisy_index", noisy_index)
        return cls(tokens_per_frame, tuple(range(clean_frames)) + tuple(noisy_index),
                   (False,) * clean_frames + (True,) * len(noisy_index))

    @property
    def key_tokens(self) -> int:
        return len(self.times) * self.tokens_per_frame

    def check(self, s: int, skv: int) -> None:
        """ValueError unless S queries and Skv keys fit the spec: Skv = slots * P, queries whole trailing slots."""
        p = self.tokens_per_frame
        if skv != self.key_tokens or not 0 < s <= skv or (skv - s) % p:
            raise ValueError(f"mask (FrameCausal of {len(self.times)} slots x {p} tokens) needs Skv = "
                             f"{self.key_tokens} keys and S a multiple of {p} up to it, got S={s}, Skv={skv}")

    def mask_mod(self, s: int, skv: int, device=None) -> Callable:
        """flex_attention's mask_mod(b, h, q_idx, kv_idx) -> bool for S queries over Skv keys."""
        self.check(s, skv)
        p, offset = self.tokens_per_frame, skv - s
        times = torch.tensor(self.times, device=device)
        noisy = torch.tensor(self.noisy, device=device)

        def mask_mod(b, h, q_idx, kv_idx):
            q_slot = (q_idx + offset) // p
            kv_slot = kv_idx // p
            return (q_slot == kv_slot) | (~noisy[kv_slot] & (times[kv_slot] < times[q_slot]))

        return mask_mod

    def dense(self, s: int, skv: int, device=None) -> torch.Tensor:
        """[S, Skv] bool, True = may attend: ``mask_mod`` on the first token of every (query, key) slot pair
        (it depends on the slots only), repeated over the slots' tokens."""
        rule, p = self.mask_mod(s, skv, device), self.tokens_per_frame
        first = rule(None, None, torch.arange(0, s, p, device=device)[:, None],
                     torch.arange(0, skv, p, device=device)[None, :])
        return first.repeat_interleave(p, 0).repeat_interleave(p, 1)
