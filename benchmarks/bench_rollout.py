"""The AR world model's rollout, eager vs compiled: ``rlir.models.sampling.generate`` with ``compile=False`` (the
KV-cached eager decode loop) and ``compile=True`` (the one-token step ``ARWorldModel.decode_step`` over the static
KV cache under torch.compile(fullgraph=True); "reduce-overhead", i.e. CUDA graphs, on CUDA).

Configs (random weights: speed does not depend on them):
  crafter_ar     the shipped Crafter AR model's shape (checkpoints/crafter/ar_world_model/config.json when present,
                 else d_model 192, 4 layers, 6 heads / 2 kv heads, 81 codes a frame), at the GRPO rollout of
                 configs/crafter_ar.yaml: B=4 prompts x G=8 samples = 32 videos, 1 context + 7 generated frames.
                 On CPU also one video (the latency-bound case).
  mineworld_300m (CUDA only) a MineWorld-300M-sized model: 20 layers, d_model 1024, 16 heads, 336 codes a frame
                 (a 14 x 24 grid), 8,192 codes + 70 action tokens (one head), 1 context + 7 frames, one video
                 (MineWorld reports 2.0 frames/s sequential, 5.9 with its parallel decoding), eager and CUDA graphs.
Providers: eager; compiled (mode "default": inductor, no CUDA graphs); on CUDA also compiled + CUDA graphs
("reduce-overhead"). Each rollout is timed end to end (prefill + every decode step), median of --repeats after
one warm-up rollout (whose time, the compilation included, is reported as first_call_s). Every provider
starts from the same generator seed, and the JSON records whether it sampled the eager tokens.

Run: OMP_NUM_THREADS=1 python benchmarks/bench_rollout.py [--repeats 3] [--tiny] [--profile] [--out DIR]
writes benchmarks/results/rollout_<cpu|cuda>.json. --tiny: a tiny model and rollout (the dry run of run_all.py).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import write_results  # noqa: E402
from rlir.models import ARWorldModel  # noqa: E402
from rlir.models.sampling import generate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CRAFTER_CONFIG = REPO / "checkpoints" / "crafter" / "ar_world_model" / "config.json"
CRAFTER_DEFAULT = dict(codebook_size=512, tokens_per_frame=81, action_head_sizes=[17], n_layers=4, d_model=192,
                       n_heads=6, n_kv_heads=2, max_frames=16)
MINEWORLD_300M = dict(codebook_size=8192, tokens_per_frame=336, action_head_sizes=[70], n_layers=20, d_model=1024,
                      n_heads=16, n_kv_heads=16, max_frames=8)
TINY = dict(codebook_size=32, tokens_per_frame=4, action_head_sizes=[5, 3], n_layers=2, d_model=32, n_heads=2,
            n_kv_heads=1, max_frames=6)
MINEWORLD_PUBLISHED_FPS = {"sequential": 2.0, "parallel decoding": 5.9}


def crafter_config() -> Dict[str, object]:
    """The shipped checkpoint's constructor arguments (when present), else the 72x72 Crafter shape."""
    if not CRAFTER_CONFIG.exists():
        return dict(CRAFTER_DEFAULT)
    data = json.loads(CRAFTER_CONFIG.read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def build(config: Dict[str, object], device: torch.device, dtype: torch.dtype) -> ARWorldModel:
    torch.manual_seed(0)
    return ARWorldModel(**config).to(device=device, dtype=dtype).eval()


def prompt(model: ARWorldModel, batch: int, n_frames: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    context = torch.randint(0, cfg.codebook_size, (batch, 1, cfg.tokens_per_frame), generator=g)
    actions = torch.stack([torch.randint(0, n, (batch, n_frames), generator=g) for n in model.head_sizes], -1)
    return context.to(device), actions.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rollouts(model, context, actions, group_size: int, compile, repeats: int) -> Dict[str, object]:
    """first_call_s (warm-up, compilation included), median seconds of ``repeats`` rollouts, and the tokens of
    the last one (for the same-tokens check)."""
    device = context.device

    def rollout():
        return generate(model, context, actions, num_samples=group_size, generator=torch.Generator(device).manual_seed(1),
                        compile=compile)

    _sync(device)
    start = time.perf_counter()
    tokens, _ = rollout()
    _sync(device)
    first = time.perf_counter() - start
    seconds = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        tokens, _ = rollout()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return {"first_call_s": first, "seconds": statistics.median(seconds), "seconds_each": seconds, "tokens": tokens}


def bench_config(name: str, config: Dict[str, object], batch: int, group_size: int, n_frames: int,
                 providers: Dict[str, object], repeats: int, device: torch.device, dtype: torch.dtype,
                 note: str = "") -> List[Dict[str, object]]:
    model = build(config, device, dtype)
    context, actions = prompt(model, batch, n_frames, device)
    videos = batch * group_size
    tokens_per_video = n_frames * model.config.tokens_per_frame
    shape = dict(B=batch, G=group_size, frames=n_frames, F=model.config.tokens_per_frame,
                 layers=model.config.n_layers, d=model.config.d_model)
    rows, eager_tokens, eager_seconds = [], None, None
    for provider, compile in providers.items():
        row: Dict[str, object] = dict(op=f"rollout/{name}", shape=shape, dtype=str(dtype)[6:], mode="forward",
                                      provider=provider, config=name, note=note)
        try:
            result = time_rollouts(model, context, actions, group_size, compile, repeats)
        except Exception as err:  # a provider that cannot run here (no C++ compiler, ...) is reported
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            print(f"{name:<16} {provider:<26} {row['error']}", flush=True)
            rows.append(row)
            continue
        tokens = result.pop("tokens")
        if eager_tokens is None:
            eager_tokens, eager_seconds = tokens, result["seconds"]
        seconds = result["seconds"]
        row.update(result, median_ms=seconds * 1e3, tokens_per_s=videos * tokens_per_video / seconds,
                   frames_per_s=videos * n_frames / seconds, ms_per_decode_step=seconds / tokens_per_video * 1e3,
                   speedup_vs_eager=eager_seconds / seconds, same_tokens_as_eager=bool(torch.equal(tokens, eager_tokens)))
        print(f"{name:<16} {provider:<26} {seconds:8.3f} s  {row['tokens_per_s']:10.0f} tokens/s "
              f"{row['frames_per_s']:8.2f} frames/s  x{row['speedup_vs_eager']:.2f}  first call {row['first_call_s']:.1f} s"
              f"  same tokens: {row['same_tokens_as_eager']}", flush=True)
        rows.append(row)
    return rows


def profile_shares(model, context, actions, group_size: int, compile) -> Dict[str, float]:
    """Share of the rollout's self CPU time (torch.profiler, one warm rollout) in attention, GEMMs, the compiled
    graph's own kernels, and everything else (elementwise ops and dispatch): what compilation can and cannot
    remove on a CPU."""
    from torch.profiler import ProfilerActivity, profile

    generate(model, context, actions, num_samples=group_size, compile=compile)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate(model, context, actions, num_samples=group_size, compile=compile)
    groups = {"attention (sdpa)": 0.0, "GEMMs (mm/addmm/bmm)": 0.0, "compiled graph kernels": 0.0, "other": 0.0}
    for event in prof.key_averages():
        name, t = event.key, event.self_cpu_time_total
        if "scaled_dot_product" in name:
            groups["attention (sdpa)"] += t
        elif name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul"):
            groups["GEMMs (mm/addmm/bmm)"] += t
        elif "CompiledFxGraph" in name or "Compiled" in name and "Region" not in name:
            groups["compiled graph kernels"] += t
        else:
            groups["other"] += t
    total = sum(groups.values()) or 1.0
    return {k: round(100 * v / total, 1) for k, v in groups.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed rollouts per provider (median)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and rollout (dry run)")
    parser.add_argument("--skip-mineworld", action="store_true", help="CUDA: skip the MineWorld-300M-sized config")
    parser.add_argument("--profile", action="store_true",
                        help="also record where the Crafter rollout's CPU time goes (torch.profiler)")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    providers = {"eager": False, "compiled": "default" if device.type == "cuda" else True}
    if device.type == "cuda":
        providers["compiled + CUDA graphs"] = "reduce-overhead"
    print(f"rollout on {device} ({dtype}), {torch.get_num_threads()} threads", flush=True)
    rows = []
    if args.tiny:
        rows += bench_config("tiny", TINY, 2, 2, 2, providers, args.repeats, device, dtype)
    else:
        config = crafter_config()
        rows += bench_config("crafter_ar", config, 4, 8, 7, providers, args.repeats, device, dtype,
                             note="configs/crafter_ar.yaml rollout: B=4 x G=8, 7 frames")
        if device.type == "cpu":
            rows += bench_config("crafter_ar", config, 1, 1, 7, providers, args.repeats, device, dtype,
                                 note="one video (the latency-bound case)")
        elif not args.skip_mineworld:
            # One video, as MineWorld reports it; eager once (~10 s a rollout) and CUDA graphs (each compiled
            # mode compiles the 20-layer step twice, the costly part of the GPU call).
            graphs = {"eager": False, "compiled + CUDA graphs": "reduce-overhead"}
            rows += bench_config("mineworld_300m", MINEWORLD_300M, 1, 1, 7, graphs, min(args.repeats, 2), device,
                                 dtype, note=f"one video; MineWorld publishes {MINEWORLD_PUBLISHED_FPS} frames/s")
    profiles = {}
    if args.profile and not args.tiny:
        model = build(crafter_config(), device, dtype)
        for batch, group in ((4, 8), (1, 1)) if device.type == "cpu" else ((4, 8),):
            context, actions = prompt(model, batch, 7, device)
            for provider, compile in providers.items():
                shares = profile_shares(model, context, actions, group, compile)
                profiles[f"{batch * group} videos, {provider}"] = shares
                print(f"profile, {batch * group} videos, {provider}: {shares}", flush=True)
    extra = {"profile_percent_of_cpu_time": profiles, "crafter_ar_config": crafter_config(), "crafter_config_source": str(CRAFTER_CONFIG.relative_to(REPO))
             if CRAFTER_CONFIG.exists() else "default (no checkpoint config)",
             "mineworld_300m_config": MINEWORLD_300M, "mineworld_published_fps": MINEWORLD_PUBLISHED_FPS,
             "repeats": args.repeats}
    write_results("rollout", rows, Path(args.out) if args.out else None, extra)
    return rows


if __name__ == "__main__":
    main()
