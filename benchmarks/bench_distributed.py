"""GRPO steps on 1 vs N processes: step time, videos/s and the communication time per step.

    OMP_NUM_THREADS=1 python benchmarks/bench_distributed.py --config configs/tiny_ar.yaml
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 benchmarks/bench_distributed.py \
        --config configs/tiny_ar.yaml parallel.strategy=fsdp

The same global batch (rollout.prompts_per_step x group_size videos) on every process count: N processes
each roll out B/N prompts, so videos/s is the job's throughput. After ``--warmup`` steps, ``--steps`` steps are
timed (median step time, rank 0) and one more is profiled (torch.profiler, CPU activity): the communication
time is the total duration of the backend's collective events (``gloo:*`` on CPU, ``nccl:*`` on CUDA) on
rank 0 in that step, i.e. the time the collectives took including waiting for the other rank. Results go to
``--out``/distributed_<tag>_<N>proc.json and one line on stdout.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlir.grpo.builders import build_run  # noqa: E402
from rlir.grpo.config import load_config  # noqa: E402
from rlir.parallel import close_distributed, init_distributed, resolve_device  # noqa: E402
from rlir.grpo.trainer import GRPOTrainer  # noqa: E402

BACKEND_EVENTS = ("gloo:", "nccl:")


def communication_seconds(trainer: GRPOTrainer) -> float:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.step()
    return sum(e.cpu_time_total for e in prof.events() if e.name.startswith(BACKEND_EVENTS)) / 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/tiny_ar.yaml")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    # A learning signal (the tiny random IDM gives equal exact-match rewards), nothing written during the steps.
    cfg = load_config(args.config, ["reward.mode=loglik", f"train.steps={args.warmup + args.steps + 1}",
                                    "train.eval_interval=0", *args.overrides])
    parallel, device = init_distributed(cfg.device)
    device = device if device is not None else resolve_device(cfg.device)
    try:
        run = build_run(cfg, device)
        trainer = GRPOTrainer(cfg, run.policy, run.idm, run.prompts, device=device, head_names=run.head_names,
                              parallel=parallel)
        for _ in range(args.warmup):
            trainer.step()
        steps = [trainer.step() for _ in range(args.steps)]
        comm = communication_seconds(trainer) if parallel.distributed else 0.0
    finally:
        close_distributed()
    if not parallel.is_main:
        return 0
    step_s = statistics.median(m["time/step"] for m in steps)
    result = {
        "config": args.config, "overrides": args.overrides, "processes": parallel.world_size,
        "strategy": cfg.parallel.strategy if parallel.distributed else "none",
        "videos_per_step": cfg.videos_per_step, "step_s_median": step_s,
        "videos_per_s": cfg.videos_per_step / step_s, "comm_s_per_step": comm,
        "step_s": [m["time/step"] for m in steps],
        "phases_s_median": {k[5:]: statistics.median(m[k] for m in steps)
                            for k in steps[0] if k.startswith("time/") and k != "time/step"},
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if device.type == "cuda" else "cpu"
    path = args.out / f"distributed_{Path(args.config).stem}_{tag}_{parallel.world_size}proc.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"{parallel.world_size} process(es), {result['strategy']}: step {step_s * 1e3:.1f} ms, "
          f"{result['videos_per_s']:.1f} videos/s, communication {comm * 1e3:.1f} ms/step -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
