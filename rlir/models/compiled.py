"""The compiled rollout: a model's per-token (AR) or per-denoising-step (DiT) step under ``torch.compile``.

``generate(..., compile=True)`` in ``rlir.models.sampling`` and ``rlir.models.flow_sampling`` runs the step as
one static-shape graph (``ARWorldModel.decode_step``, ``DiTWorldModel.static_velocity``): positions are device
tensors and attention reads the whole static KV cache with a mask, so one graph serves every position, with
``fullgraph=True`` (a graph break raises). On CUDA the mode is "reduce-overhead": the graph is a CUDA graph,
replayed with one launch a step. Sampling (which draws from a ``torch.Generator``) stays outside the graph,
so compiled and eager rollouts draw the same numbers.
"""
from __future__ import annotations

import types
import weakref
from typing import Callable, Optional

import torch

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(compile, device=None) -> Optional[str]:
    """A ``compile`` argument -> a torch.compile mode, or None for eager: False/None is eager; True is
    "reduce-overhead" (CUDA graphs) on CUDA and "default" elsewhere; a string names the mode."""
    if compile is False or compile is None:
        return None
    if compile is True:
        return "reduce-overhead" if device is not None and torch.device(device).type == "cuda" else "default"
    if isinstance(compile, str) and compile in MODES:
        return compile
    raise ValueError(f"compile must be False, True or a torch.compile mode {list(MODES)}, got {compile!r}")


_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_BUFFERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def compiled_step(model: torch.nn.Module, fn: Callable, mode: str, device=None, dynamic: bool = False) -> Callable:
    """``torch.compile(fn, fullgraph=True, dynamic=dynamic, mode=mode)``, made once per (model, fn, mode, device
    type) and kept while the model lives. Each gets a fresh code object: dynamo counts its recompile limit (8)
    per code object, and graphs specialise per shape, so models must not share one. On CPU the "default" mode
    uses inductor's C++ wrapper (the graph's ~50 kernel calls without a Python call each: 0.55 -> 0.36 ms a
    decode step of the Crafter model at batch 1)."""
    per_model = _COMPILED.setdefault(model, {})
    cpu = device is not None and torch.device(device).type == "cpu"
    key = (fn, mode, cpu, dynamic)
    if key not in per_model:
        code = fn.__code__.replace(co_name=f"{fn.__name__}_{id(model):x}_{mode.replace('-', '_')}{'_cpu' * cpu}")
        fresh = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
        if cpu and mode == "default":
            per_model[key] = torch.compile(fresh, fullgraph=True, dynamic=dynamic, options={"cpp_wrapper": True})
        else:
            per_model[key] = torch.compile(fresh, fullgraph=True, dynamic=dynamic, mode=mode)
    return per_model[key]


def static_buffers(model: torch.nn.Module, tag: str, *tensors: torch.Tensor) -> tuple:
    """Copies of ``tensors`` in buffers at fixed addresses, one set per (model, tag, shapes, dtypes, device),
    reused by every rollout of that shape: a CUDA graph reads and writes the addresses it was recorded with
    (they are marked static for dynamo on CUDA)."""
    per_model = _BUFFERS.setdefault(model, {})
    key = (tag,) + tuple((tuple(t.shape), t.dtype, str(t.device)) for t in tensors)
    if key not in per_model:
        buffers = tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in tensors)
        if buffers and buffers[0].is_cuda:
            for b in buffers:
                torch._dynamo.mark_static_address(b)
        per_model[key] = buffers
    buffers = per_model[key]
    for b, t in zip(buffers, tensors):
        b.copy_(t)
    return buffers


def uses_cuda_graphs(mode: Optional[str], device) -> bool:
    """True when a step compiled in ``mode`` runs as a CUDA graph: then each call must be preceded by
    ``torch.compiler.cudagraph_mark_step_begin()`` (its outputs are overwritten by the next replay)."""
    return mode is not None and "reduce-overhead" in mode and torch.device(device).type == "cuda"
