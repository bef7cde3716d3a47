"""Dispatch and input checks shared by every kernel in rlir.kernels.

Dispatch rule: Triton for CUDA tensors, the PyTorch reference for everything else.
``RLIR_KERNELS=torch`` or ``RLIR_KERNELS=triton`` forces one path; the Triton path on CPU tensors
only works under ``TRITON_INTERPRET=1`` (how the tests run it).
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator, Optional, Sequence

import torch

from ._launch import recording_active

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)

try:  # triton is optional: CPU-only installs (macOS, Windows) run the references.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - triton ships with Linux torch wheels
    triton = tl = None  # every kernel module defines its @triton.jit functions under ``if HAS_TRITON``
    HAS_TRITON = False


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors: Optional[torch.Tensor]) -> bool:
    """True when the Triton path should run for these tensors (always inside ``_launch.recording()``)."""
    if recording_active():
        return True
    forced = os.environ.get("RLIR_KERNELS", "").strip().lower()
    if forced not in ("", "torch", "triton"):
        raise ValueError(f"RLIR_KERNELS must be 'torch' or 'triton', got {forced!r}")
    if forced == "torch":
        return False
    on_cuda = any(t is not None and t.is_cuda for t in tensors)
    if forced == "triton":
        if not HAS_TRITON:
            raise ValueError("RLIR_KERNELS=triton but triton is not installed")
        if not on_cuda and not _interpreting():
            raise ValueError("RLIR_KERNELS=triton with CPU tensors needs TRITON_INTERPRET=1")
        return True
    return on_cuda and HAS_TRITON


def check_tensor(name: str, t, *, ndim: Optional[int | Sequence[int]] = None,
                 dtypes: Optional[Sequence[torch.dtype]] = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.ndim not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dims, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    return t


def check_shape(name: str, t: torch.Tensor, shape: Sequence[int]) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def check_same_device(**tensors: Optional[torch.Tensor]) -> None:
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {v.device for v in present.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{k} on {v.device}" for k, v in present.items())
        raise ValueError(f"all tensors must be on one device: {listing}")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero) or value != value:
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return float(value)


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


_TRUSTED = threading.local()


@contextlib.contextmanager
def trusted_inputs() -> Iterator[None]:
    """Inside this block the checks that read tensor *values* back to the host (index ranges, sigma ranges,
    the world models' code and action ranges) are skipped; shape, dtype and device checks still run, since
    they cost nothing. A host read is a device sync on CUDA, so a hot path validates its inputs once at its
    public boundary (``Policy.rollout``) and runs everything after it in here (``GRPOTrainer.step`` does).
    Calls from user code, outside any such block, are checked as before. Nests; per thread."""
    depth = getattr(_TRUSTED, "depth", 0)
    _TRUSTED.depth = depth + 1
    try:
        yield
    finally:
        _TRUSTED.depth = depth


def checking_values() -> bool:
    """False inside ``trusted_inputs()``: value checks that would sync are skipped."""
    return getattr(_TRUSTED, "depth", 0) == 0


def check_index_range(name: str, ids: torch.Tensor, upper: int, valid: Optional[torch.Tensor] = None) -> None:
    """Every id (where ``valid``) must lie in [0, upper). One reduction; syncs on CUDA, so it is skipped
    inside ``trusted_inputs()``."""
    if not checking_values():
        return
    bad = (ids < 0) | (ids >= upper)
    if valid is not None:
        bad = bad & valid
    if bool(bad.any()):
        raise ValueError(f"{name} must lie in [0, {upper}); found {int(bad.sum())} out-of-range entries")


def mask_or_ones(mask: Optional[torch.Tensor], like: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """A boolean-valued mask with the shape of ``like`` (ones when None)."""
    if mask is None:
        return torch.ones(like.shape, dtype=torch.bool, device=like.device)
    check_tensor(name, mask)
    check_shape(name, mask, like.shape)
    if mask.dtype.is_complex:
        raise ValueError(f"{name} must be bool or real, got {mask.dtype}")
    return mask if mask.dtype == torch.bool else mask != 0


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def num_warps_for(block_elements: int, per_thread: int = 8) -> int:
    """Warps for a program holding ``block_elements`` values in registers: ``per_thread`` each, 4 to 16 warps
    (more elements a thread, from 16 warps up, cost registers and then spills; ``rlir kernels compile``)."""
    return max(4, min(16, next_pow2(block_elements) // (32 * per_thread)))
