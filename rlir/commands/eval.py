"""`rlir eval`: action-following and visual quality of a world model (or of a GRPO run, before vs after).
The work is ``rlir.eval.run.run_eval`` (its docstring says what is measured and written).

    rlir eval --data data/crafter                          # the shipped world model
    rlir eval --data data/crafter --run runs/grpo/x        # a GRPO run: its start vs its latest checkpoint
    rlir eval --data data/crafter --world-model A --baseline B
"""
from __future__ import annotations

import sys
from pathlib import Path

from rlir.eval.run import SHIPPED


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="action-following (eval IDM), PSNR and SSIM of a world model, "
                                   "with a markdown report and video grid")
    parser.add_argument("--data", type=Path, required=True, help="a recording folder (its held-out episodes)")
    parser.add_argument("--world-model", type=Path, default=None,
                        help="a save_pretrained dir, a GRPO run dir or one of its checkpoints "
                             f"(default: {SHIPPED / 'ar_world_model'})")
    parser.add_argument("--run", type=Path, default=None,
                        help="a GRPO run dir: compare the model it started from (before) with its latest "
                             "checkpoint (after) and plot its training curves")
    parser.add_argument("--baseline", type=Path, default=None, help="a second world model, reported as 'before'")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help=f"default: the run's own (its config.yaml), else {SHIPPED / 'tokenizer'}")
    parser.add_argument("--idm", type=Path, default=None, help="the reward IDM (default: as --tokenizer)")
    parser.add_argument("--eval-idm", type=Path, default=None, help="the held-out IDM (default: as --tokenizer)")
    parser.add_argument("--frames", type=int, default=15, help="generated frames per prompt (default 15)")
    parser.add_argument("--prompts", type=int, default=64, help="held-out prompts (default 64)")
    parser.add_argument("--all-episodes", action="store_true",
                        help="take prompts from every episode of --data, not only its held-out split (for a "
                             "recording of seeds no model was trained on, e.g. `rlir data record --seed 1000`)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", type=int, default=4, help="prompts shown in the video grid (default 4)")
    parser.add_argument("--action-sensitivity", action="store_true",
                        help="AR models: also report the held-out teacher-forced NLL under true vs shuffled / "
                             "swapped actions (does the model use its actions at all?)")
    parser.add_argument("--calibrate-verifier", action="store_true",
                        help="Crafter: instead of evaluating a model, replay the held-out episodes (every episode with "
                             "--all-episodes) from their seeds and report how often the verifier agrees with "
                             "Crafter's own state (calibration.json in --out)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report directory (default: RUN/eval with --run, else print only)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from rlir.eval.run import run_eval

    try:
        if args.calibrate_verifier:
            return _calibrate(args)
        run_eval(args.data, run=args.run, world_model=args.world_model, baseline=args.baseline,
                 tokenizer=args.tokenizer, idm=args.idm, eval_idm=args.eval_idm, frames=args.frames,
                 prompts=args.prompts, temperature=args.temperature, seed=args.seed, grid=args.grid,
                 action_sensitivity=args.action_sensitivity, all_episodes=args.all_episodes, out=args.out,
                 command=getattr(args, "invocation", ""))
    except (ValueError, FileNotFoundError) as error:  # EvalError, ConfigError, RecordingError: one line each
        print(f"rlir eval: error: {error}", file=sys.stderr)
        return 2
    return 0


def _calibrate(args) -> int:
    import json

    from rlir.data import Recording, split_episodes
    from rlir.eval.verify import calibrate

    recording = Recording(args.data)
    if recording.env != "crafter":
        raise ValueError(f"--calibrate-verifier: {args.data} is a {recording.env!r} recording; the verifier is Crafter's")
    episodes = recording.episode_ids if args.all_episodes else split_episodes(recording.episode_ids, 0.1)[1]
    result = {"data": str(recording.root), **calibrate(recording, episodes)}
    print(json.dumps(result, indent=1))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "calibration.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0
