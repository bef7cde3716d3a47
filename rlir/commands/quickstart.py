"""`rlir quickstart`: the main job end to end on the built-in Crafter default.

1. records the Crafter data set the shipped checkpoints were trained on (60 episodes, seed 0, 72x72), unless
   ``--data`` already holds a recording;
2. post-trains the shipped AR world model (``--kind ar``, the paper's MineWorld setting) or DiT (``--kind
   diffusion``, the NFD setting) with RLIR (``rlir train --config configs/crafter_ar.yaml`` or
   ``crafter_diffusion.yaml``), resuming if the run directory already has a checkpoint;
3. records Crafter seeds that no checkpoint was trained on (20 episodes from seed 10000) into ``--eval-data``,
   unless it already holds a recording (the DiT recipes of issue 22 were compared on these seeds, so their
   final check uses seeds 20000-20019: ``rlir data record --seed 20000``, then ``--eval-data``);
4. evaluates the shipped model (before) against the post-trained one (after) on prompts from every episode of
   that recording (``rlir eval --run --all-episodes``), with the Crafter verifier's scroll fidelity as the
   headline and the standard error of each delta, and writes report.md / report.json / the video grid / the
   training curves.

Sized for a 15-minute budget on a 2-core CPU (the README has the measured time); on a GPU (device: auto) the
same run is faster.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


EVAL_SEED = 10_000  # Crafter seeds 10000-10019: no checkpoint was trained on them (the committed reports use them)
CONFIGS = {"ar": Path("configs/crafter_ar.yaml"), "diffusion": Path("configs/crafter_diffusion.yaml")}


def register(subparsers) -> None:
    parser = subparsers.add_parser("quickstart", help="record Crafter data, post-train a shipped world model "
                                   "with RLIR, evaluate before vs after", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=sorted(CONFIGS), default="ar",
                        help="which shipped world model to post-train: the AR token model or the DiT (default: ar)")
    parser.add_argument("--config", type=Path, default=None,
                        help="run config (default: configs/crafter_ar.yaml or configs/crafter_diffusion.yaml by --kind)")
    parser.add_argument("--data", type=Path, default=Path("data/crafter"), help="recording (made if missing)")
    parser.add_argument("--eval-data", type=Path, default=Path("data/crafter_unseen"),
                        help="evaluation recording of unseen Crafter seeds (made if missing)")
    parser.add_argument("--out", type=Path, default=None,
                        help="run directory (default: runs/quickstart, or runs/quickstart_diffusion)")
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps (default: the config's train.steps)")
    parser.add_argument("--prompts", type=int, default=64, help="held-out prompts for the final evaluation")
    parser.add_argument("--frames", type=int, default=15, help="generated frames per prompt in the evaluation")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=1e-4")
    parser.set_defaults(func=run)


def _banner(text: str) -> None:
    print(f"\n=== rlir quickstart: {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    from rlir.commands.eval import run_eval
    from rlir.data import record
    from rlir.grpo.checkpoint import latest_checkpoint
    from rlir.grpo.config import ConfigError, load_config

    start = time.perf_counter()
    timings = {}
    config = args.config or CONFIGS[args.kind]  # found in the installed package from any directory
    out = args.out or Path("runs/quickstart" if args.kind == "ar" else f"runs/quickstart_{args.kind}")
    if not (args.data / "manifest.json").is_file():
        _banner(f"recording Crafter into {args.data} (60 episodes, seed 0: the shipped models' data)")
        t = time.perf_counter()
        record("crafter", args.data, episodes=60, steps=500, seed=0)
        timings["record"] = time.perf_counter() - t

    overrides = [f"out={out}", f"data.path={args.data}", *args.overrides]
    if args.steps is not None:
        overrides += [f"train.steps={args.steps}", f"train.checkpoint_interval={args.steps}"]
    try:
        cfg = load_config(config, overrides)
    except ConfigError as error:
        print(f"rlir quickstart: error: {error}", file=sys.stderr)
        return 2
    from rlir.grpo.trainer import GRPOTrainer

    resume = latest_checkpoint(out / "checkpoints") is not None
    _banner(f"RLIR post-training, {cfg.train.steps} GRPO steps -> {out}" + (" (resuming)" if resume else ""))
    t = time.perf_counter()
    trainer = GRPOTrainer.from_config(cfg, resume=resume)
    try:
        trainer.train()
    finally:
        trainer.close()
    timings["train"] = time.perf_counter() - t

    if not (args.eval_data / "manifest.json").is_file():
        _banner(f"recording unseen Crafter seeds into {args.eval_data} (20 episodes from seed {EVAL_SEED})")
        t = time.perf_counter()
        record("crafter", args.eval_data, episodes=20, steps=500, seed=EVAL_SEED)
        timings["record"] = timings.get("record", 0.0) + time.perf_counter() - t
    _banner(f"evaluating before vs after on {args.eval_data} (seeds no model was trained or tuned on)")
    t = time.perf_counter()
    run_eval(args.eval_data, run=out, prompts=args.prompts, frames=args.frames, all_episodes=True,
             command=getattr(args, "invocation", "rlir quickstart"))
    timings["eval"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    print("rlir quickstart: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items()))
    print(f"rlir quickstart: report {out / 'eval' / 'report.md'}")
    return 0
