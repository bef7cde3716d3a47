"""Static KV cache: keys and values preallocated as [B, Hkv, max_len, D] per layer, plus a fill length.

``KVCache`` is the eager cache: a Python-int fill length, attention over the filled prefix. ``StaticKVCache``
is the same buffers seen by a static-shape (compilable, CUDA-graphable) step: it writes at positions given
as a device tensor and hands attention the whole buffer, which the step masks (see
``ARWorldModel.decode_step``), so one graph serves every position."""
from __future__ import annotations

from typing import Sequence

import torch


class KVCache:
    """Holds ``length`` filled positions per layer; a forward over s new tokens writes [length, length + s).

    The model writes every layer at ``start = length`` and then calls ``advance(s)``. Attention reads the
    filled prefix as a view (no copy), so a decode step costs attention over ``length`` keys, not max_len.
    """

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int, *,
                 dtype: torch.dtype = torch.float32, device=None):
        for name, value in (("n_layers", n_layers), ("batch", batch), ("n_kv_heads", n_kv_heads),
                            ("max_len", max_len), ("head_dim", head_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, Hkv, s, D] at [length, length + s) of ``layer``; return that layer's filled keys/values."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions needed, max_len is {self.max_len}")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, s: int) -> None:
        self.length += s

    def repeat_interleave(self, repeats: int) -> "KVCache":
        """A new cache whose row b * repeats + g is a copy of row b: G samples continue one shared prefill."""
        out = KVCache.__new__(KVCache)
        out.k = self.k.repeat_interleave(repeats, dim=1)
        out.v = self.v.repeat_interleave(repeats, dim=1)
        out.length = self.length
        return out


class LayerKVCache(KVCache):
    """A ``KVCache`` (Python-int fill length) over per-layer buffers [B, Hkv, max_len, D], such as a compiled
    rollout's static buffers: the eager steps around the compiled one (a DiT appending a finished frame) write
    where the compiled step reads."""

    def __init__(self, k: Sequence[torch.Tensor], v: Sequence[torch.Tensor], length: int = 0):
        self.k, self.v, self.length = list(k), list(v), length

    @property
    def batch(self) -> int:
        return self.k[0].shape[0]

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions needed, max_len is {self.max_len}")
        # index_copy_ on the whole per-layer buffer: compiled, it stays in place (a slice assignment would not)
        positions = torch.arange(self.length, end, device=k.device)
        self.k[layer].index_copy_(2, positions, k)
        self.v[layer].index_copy_(2, positions, v)
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def repeat_interleave(self, repeats: int) -> "LayerKVCache":
        return LayerKVCache([t.repeat_interleave(repeats, dim=0) for t in self.k],
                            [t.repeat_interleave(repeats, dim=0) for t in self.v], self.length)


class StaticKVCache:
    """Per-layer keys/values [B, Hkv, max_len, D] (separate tensors, not views of one: torch.compile turns an
    in-place write into a view of a graph input into a copy of the whole base) written at ``positions`` [s],
    a device tensor: ``update`` has no Python-level dependence on the position (no graph break, no recompile),
    and returns the layer's full buffers; the caller masks the keys after each query."""

    def __init__(self, k: Sequence[torch.Tensor], v: Sequence[torch.Tensor], positions: torch.Tensor):
        self.k, self.v, self.positions = k, v, positions

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k[layer].index_copy_(2, self.positions, k)
        self.v[layer].index_copy_(2, self.positions, v)
        return self.k[layer], self.v[layer]
