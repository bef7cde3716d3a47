"""`rlir eval`: action-following and visual quality of a world model (or of a GRPO run, before vs after).

Each held-out prompt is a real first frame plus the next ``--frames`` real commanded actions. The world model
generates the frames; the evaluation IDM (never seen by the reward) and the reward IDM read the actions back;
PSNR and SSIM compare the generated frames with the real continuation. The same IDMs on the real frames give
the ceiling. Writes report.json, report.md, a video grid (PNG, MP4, GIF) and, for a run, its training curves.

    rlir eval --data data/crafter                          # the shipped world model
    rlir eval --data data/crafter --run runs/grpo/x        # a GRPO run: its start vs its latest checkpoint
    rlir eval --data data/crafter --world-model A --baseline B
"""
from __future__ import annotations

from pathlib import Path

CHECKPOINTS = Path("checkpoints/crafter")


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="action-following (eval IDM), PSNR and SSIM of a world model, "
                                   "with a markdown report and video grid")
    parser.add_argument("--data", type=Path, required=True, help="a recording folder (its held-out episodes)")
    parser.add_argument("--world-model", type=Path, default=None,
                        help="a save_pretrained dir, a GRPO run dir or one of its checkpoints "
                             f"(default: {CHECKPOINTS / 'ar_world_model'})")
    parser.add_argument("--run", type=Path, default=None,
                        help="a GRPO run dir: compare the model it started from (before) with its latest "
                             "checkpoint (after) and plot its training curves")
    parser.add_argument("--baseline", type=Path, default=None, help="a second world model, reported as 'before'")
    parser.add_argument("--tokenizer", type=Path, default=CHECKPOINTS / "tokenizer")
    parser.add_argument("--idm", type=Path, default=CHECKPOINTS / "idm", help="the reward IDM")
    parser.add_argument("--eval-idm", type=Path, default=CHECKPOINTS / "eval_idm", help="the held-out IDM")
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
    parser.add_argument("--out", type=Path, default=None,
                        help="report directory (default: RUN/eval with --run, else print only)")
    parser.set_defaults(func=run)


def _models(args) -> dict:
    """label -> path of the world models to evaluate, in report order."""
    from rlir.eval.loading import run_base_world_model

    if args.run is not None:
        if args.world_model is not None:
            raise SystemExit("rlir eval: error: give --run or --world-model, not both")
        base = args.baseline or run_base_world_model(args.run)
        if base is None:
            raise SystemExit(f"rlir eval: error: --run {args.run} is not a GRPO run (no checkpoints/)")
        return {"before": Path(base), "after": args.run}
    model = args.world_model or CHECKPOINTS / "ar_world_model"
    if args.baseline is not None:
        return {"before": args.baseline, "after": model}
    return {"model": model}


def run(args) -> int:
    import torch

    from rlir.data import Recording
    from rlir.eval.evaluate import HeldOutPrompts, evaluate_world_model, idm_metrics
    from rlir.eval.loading import load_world_model
    from rlir.eval.media import plot_curves, write_video_grid
    from rlir.eval.report import HEADLINE, build_report, write_report
    from rlir.metrics import format_report
    from rlir.models.idm import InverseDynamicsModel
    from rlir.models.tokenizer import VQTokenizer

    if args.frames < 1 or args.prompts < 1:
        raise SystemExit("rlir eval: error: --frames and --prompts must be >= 1")
    models = _models(args)
    out = args.out if args.out is not None else (args.run / "eval" if args.run is not None else None)
    tokenizer = VQTokenizer.from_pretrained(args.tokenizer).eval()
    recording = Recording(args.data, frame_size=tokenizer.frame_size)  # any recording, at the models' size
    try:
        prompts = HeldOutPrompts.from_recording(recording, args.prompts, args.frames, args.all_episodes)
    except ValueError as error:
        raise SystemExit(f"rlir eval: error: --data: {error}")
    idms = {"eval_idm": InverseDynamicsModel.from_pretrained(args.eval_idm).eval(),
            "reward_idm": InverseDynamicsModel.from_pretrained(args.idm).eval()}

    results = {"real": idm_metrics(idms, prompts.real, prompts, recording.action_space)}
    videos = {"real": prompts.real}
    info_models = {}
    for label, path in models.items():
        model, info = load_world_model(path)
        metrics, videos[label] = evaluate_world_model(model, tokenizer, idms, prompts, recording.action_space,
                                                      temperature=args.temperature, seed=args.seed)
        if args.action_sensitivity:
            from rlir.eval.action_sensitivity import action_sensitivity

            nll = action_sensitivity(model, tokenizer, prompts.real, prompts.actions,
                                     recording.action_space.heads[0].classes)
            metrics.update({f"nll_{k}": v for k, v in nll.items()})
            print(f"{label}: teacher-forced NLL per code " + ", ".join(f"{k} {v:.4f}" for k, v in nll.items()))
        results[label] = metrics
        info_models[label] = info
        print(f"== {label}: {info['source']}")
        print(format_report(metrics["eval_idm/report"]))

    info = {"prompts": len(prompts), "frames": args.frames, "temperature": args.temperature, "seed": args.seed,
            "models": info_models, "video_rows": list(videos),
            "command": getattr(args, "invocation", "")}
    report = build_report(results, info=info)
    for key, title in HEADLINE:
        print(f"{title:48s} " + "  ".join(f"{k} {v:.4f}" for k, v in report["metrics"][key].items() if v is not None))
    if out is None:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    names = [action_names(recording.action_space, a) for a in prompts.actions[:args.grid]]
    files = {k: p.name for k, p in write_video_grid(out, videos, names, count=args.grid).items()}
    metrics_jsonl = args.run / "metrics.jsonl" if args.run is not None else None
    if metrics_jsonl is not None and metrics_jsonl.is_file() and plot_curves(metrics_jsonl, out / "curves.png"):
        files["curves"] = "curves.png"
    paths = write_report(out, report, files)
    print(f"report: {paths['md']} (and {paths['json'].name}, {', '.join(files.values())})")
    return 0


def action_names(action_space, actions) -> list[str]:
    """Commanded actions [n, H] of one prompt -> short labels, e.g. 'move_left'."""
    return ["+".join(action_space.class_names(row.tolist()).values()) for row in actions]
