"""Compile every Triton kernel of rlir.kernels for a CUDA GPU on a machine without one.

Triton builds a cubin for ``GPUTarget("cuda", arch, 32)`` with no driver: it ships ptxas. The launch
configurations are the ops' own: ``workloads()`` calls every op on representative inputs inside
``_launch.recording()``, so each recorded launch carries exactly the constexprs, num_warps and argument types
(pointer dtypes, integer specialisations) the op launches on a GPU, and Triton's own binder (the code
``JITFunction.run`` uses) turns it into the compiler's signature. Each distinct configuration is compiled in a
fresh cache (so ptxas really runs) with Triton's ptxas log on; the log gives registers, stack and spills, and
Triton's metadata the shared memory it allocates.

Needs a process without TRITON_INTERPRET=1: the interpreter replaces triton.language's own jit helpers.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import pkgutil
import re
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

import torch

from ._common import HAS_TRITON
from ._launch import Launch, recording

ARCHS = (90, 100)  # H100 (sm_90), B200 (sm_100)


@dataclass(frozen=True)
class KernelBuild:
    kernel: str
    config: str  # constexprs, num_warps and the first (input) pointer's type
    workload: str  # the first workload that launched this configuration
    arch: int
    registers: int
    shared_bytes: int  # shared memory Triton allocates (metadata.shared)
    stack_bytes: int
    spill_stores: int  # bytes
    spill_loads: int  # bytes
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def _kernel_modules():
    package = Path(__file__).parent
    for info in pkgutil.iter_modules([str(package)]):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"{__package__}.{info.name}")


def all_kernels() -> Dict[str, object]:
    """Every Triton kernel defined in rlir.kernels, by name: the @triton.jit functions that no other one calls
    (those are helpers, which Triton inlines into the kernels that call them)."""
    from triton.runtime.jit import KernelInterface

    jitted = {name: obj for module in _kernel_modules() for name, obj in vars(module).items()
              if isinstance(obj, KernelInterface) and getattr(obj, "fn", obj).__module__ == module.__name__}
    sources = {name: inspect.getsource(getattr(obj, "fn", obj)) for name, obj in jitted.items()}
    return {name: obj for name, obj in jitted.items()
            if not any(re.search(rf"\b{name}\(", src) for other, src in sources.items() if other != name)}


def workloads() -> Iterator[Tuple[str, Callable[[], None]]]:
    """(label, call) for every op: the shapes, dtypes and options the project uses (Crafter's 32-code and
    MineWorld's 8,262-token vocabularies, GRPO groups of 8, Crafter's IDM heads, DiT latents) and each op's
    largest block (129,920-token vocabularies, a group or an IDM head of 16,384), forward and backward."""
    import rlir.kernels as K

    f32, bf16 = torch.float32, torch.bfloat16

    def backward(*outs):
        sum(o.float().sum() for o in outs).backward()

    for V, dtype, entropy in ((32, f32, False), (1000, f32, True), (2048, bf16, True), (8262, bf16, False),
                              (8262, bf16, True), (129920, bf16, True)):
        def call(V=V, dtype=dtype, entropy=entropy):
            z = torch.zeros(4, V, dtype=dtype, requires_grad=True)
            out = K.token_logprobs(z, torch.zeros(4, dtype=torch.long), 1.0, entropy)
            backward(*(out if entropy else (out,)))
        yield f"token_logprobs V={V} {str(dtype)[6:]}{' +entropy' if entropy else ''}", call

    def fused_linear():
        hidden = torch.zeros(4, 64, dtype=bf16, requires_grad=True)
        weight = torch.zeros(8262, 64, dtype=bf16, requires_grad=True)
        backward(K.fused_linear_logprobs(hidden, weight, torch.zeros(4, dtype=torch.long)))
    yield "fused_linear_logprobs V=8262 bf16", fused_linear

    def loss_inputs(T, per_token=False):
        logp = torch.zeros(8, T, requires_grad=True)
        adv = torch.zeros(8, T) if per_token else torch.zeros(8)
        return logp, torch.zeros(8, T), adv, torch.ones(8, T, dtype=torch.bool), torch.zeros(8, T)

    for label, T, per_token, options in (
            ("token-mean T=448", 448, False, dict()),
            ("+KL delta seq-mean-token-mean T=4096", 4096, False,
             dict(beta=0.04, delta=2.0, loss_agg="seq-mean-token-mean", ref=True)),
            ("sequence-level seq-sum-norm T=4096", 4096, False, dict(is_level="sequence", loss_agg="seq-sum-norm")),
            ("per-token advantages T=7", 7, True, dict())):
        def call(T=T, per_token=per_token, options=options):
            logp, old, adv, mask, ref = loss_inputs(T, per_token)
            options = dict(options)
            ref = ref if options.pop("ref", False) else None
            backward(K.grpo_loss(logp, old, adv, mask, ref, **options)[0])
        yield f"grpo_loss {label}", call

    for label, kwargs, n in (("group_size=8", dict(group_size=8), 32),
                             ("group_index scale=batch rloo", dict(scale="batch", estimator="rloo"), 30),
                             ("group_size=16384 scale=none", dict(group_size=16384, scale="none"), 16384)):
        def call(kwargs=kwargs, n=n):
            if "group_size" not in kwargs:
                kwargs = dict(kwargs, group_index=torch.arange(n) % 7)
            K.group_advantage(torch.zeros(n), **kwargs)
        yield f"group_advantage {label}", call

    for label, sizes, mode, t in (("Crafter head 17 exact T=8", (17,), "exact", 8),
                                  ("heads 17+3 per_head T=8", (17, 3), "per_head", 8),
                                  ("heads 17+3 loglik T=64", (17, 3), "loglik", 64),
                                  ("head 16384 loglik", (16384,), "loglik", 4)):
        def call(sizes=sizes, mode=mode, t=t):
            logits = [torch.zeros(16, t, c, dtype=bf16) for c in sizes]
            K.idm_reward(logits, torch.zeros(16, t, len(sizes), dtype=torch.long), mode=mode)
        yield f"idm_reward {label}", call

    for label, shape, dtype in (("DiT latents 8x9x9 fp32", (16, 8, 9, 9), f32),
                                ("pixels 3x64x64 bf16", (16, 3, 64, 64), bf16)):
        def call(shape=shape, dtype=dtype):
            x = torch.zeros(shape, dtype=dtype, requires_grad=True)
            v = torch.zeros(shape, dtype=dtype, requires_grad=True)
            sampled = K.flow_sde_step(x, v, 0.8, 0.7, 0.7, noise=torch.zeros(shape, dtype=dtype))
            backward(sampled.x_next, sampled.mean, sampled.log_prob)  # every gradient input, to x and v
            scored = K.flow_sde_step(x.detach(), v, 0.8, 0.7, 0.7, x_next=sampled.x_next.detach())
            backward(scored.log_prob)  # the policy's score: log_prob to v only
        yield f"flow_sde_step {label}", call


def recorded_launches() -> List[Tuple[str, Launch]]:
    """(workload label, launch) for every kernel launch of every workload."""
    out = []
    for label, call in workloads():
        with recording() as launches:
            call()
        out += [(label, launch) for launch in launches]
    return out


def _specialise(launch: Launch, backend):
    """Triton's own binding of a launch: (options, signature, constexprs, attrs), as JITFunction.run makes it."""
    from triton import knobs
    from triton.runtime.jit import create_function_from_signature

    jit = launch.kernel
    binder = create_function_from_signature(jit.signature, jit.params, backend)
    kwargs = dict(launch.kwargs, debug=launch.kwargs.get("debug", jit.debug) or knobs.runtime.debug)
    bound, specialization, options = binder(*launch.args, **kwargs)
    return jit._pack_args(backend, kwargs, bound, specialization, options)


def _config(launch: Launch, signature: dict, options) -> str:
    declared = [p.name for p in launch.kernel.params if p.is_constexpr]
    parts = [f"{name}={launch.kwargs[name]}" for name in declared if name in launch.kwargs]
    first_pointer = next((t for t in signature.values() if t.startswith("*")), "")
    return " ".join(parts + [f"warps={options.num_warps}", f"in={first_pointer}"])


_PTXAS = {
    "registers": re.compile(r"Used (\d+) registers"),
    "stack_bytes": re.compile(r"(\d+) bytes stack frame"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
}


def _parse_ptxas_log(log: str, name: str) -> Dict[str, int]:
    found = {key: pattern.search(log) for key, pattern in _PTXAS.items()}
    missing = [key for key, match in found.items() if match is None]
    if missing:
        raise RuntimeError(f"{name}: no {', '.join(missing)} in the ptxas log:\n{log}")
    return {key: int(match.group(1)) for key, match in found.items()}


def compile_kernels(archs: Sequence[int] = (90,)) -> List[KernelBuild]:
    """Compile every distinct launch configuration of every workload for each arch; one KernelBuild each."""
    if not HAS_TRITON:
        raise ValueError("compile_kernels needs triton (pip install triton)")
    for arch in archs:
        if isinstance(arch, bool) or not isinstance(arch, int) or arch < 75:
            raise ValueError(f"archs must be CUDA compute capabilities such as 90 or 100, got {arch!r}")
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import JITFunction

    launches = recorded_launches()
    if launches and not isinstance(launches[0][1].kernel, JITFunction):
        raise ValueError("compile_kernels needs a process without TRITON_INTERPRET=1 (the kernels are interpreted)")
    missing = set(all_kernels()) - {launch.name for _, launch in launches}
    if missing:
        raise RuntimeError(f"no workload launches {sorted(missing)}: add one to kernels/_compile.workloads")

    builds: List[KernelBuild] = []
    with tempfile.TemporaryDirectory() as cache, knobs.cache.scope(), knobs.nvidia.scope(), \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
        knobs.cache.dir = cache  # empty: every compile runs ptxas and prints its log
        knobs.nvidia.dump_ptxas_log = True
        for arch in archs:
            target = GPUTarget("cuda", arch, 32)
            backend = make_backend(target)
            seen = set()
            for label, launch in launches:
                options, signature, constexprs, attrs = _specialise(launch, backend)
                key = (launch.name, repr(signature), repr(constexprs), repr(attrs), repr(options))
                if key in seen:
                    continue
                seen.add(key)
                log = io.StringIO()
                start = time.perf_counter()
                with contextlib.redirect_stdout(log):
                    compiled = triton.compile(ASTSource(launch.kernel, signature, constexprs, attrs), target=target,
                                              options=options.__dict__)
                seconds = time.perf_counter() - start
                builds.append(KernelBuild(launch.name, _config(launch, signature, options), label, arch,
                                          shared_bytes=compiled.metadata.shared, seconds=round(seconds, 3),
                                          **_parse_ptxas_log(log.getvalue(), launch.name)))
    return builds
