"""`rlir eval`: action-following and visual quality of a world model (or of a GRPO run, before vs after).
``run_eval`` is the whole command as a function (``rlir quickstart`` calls it too).

    rlir eval --data data/crafter                          # the shipped world model
    rlir eval --data data/crafter --run runs/grpo/x        # a GRPO run: its start vs its latest checkpoint
    rlir eval --data data/crafter --world-model A --baseline B

Each held-out prompt is a real first frame plus the next ``frames`` real commanded actions. Every world model
generates the frames through ``Policy.generate`` with the evaluation sampler; the evaluation IDM (never a
reward) and the reward IDM read the actions back; PSNR and SSIM compare the generated frames with the real
continuation; on Crafter, the verifier (``rlir.eval.verify``, no learned model) checks each transition's scroll,
facing and blocked moves against the game's rules. The same IDMs and verifier on the real frames give the ceiling.
Under torchrun every rank generates its share of the prompts and rank 0 reports (``rlir.eval.evaluate``). With
``out``, writes report.json, report.md, a video grid (PNG, MP4, GIF) and, for a GRPO run, its training curves.

Which models: ``run`` (a GRPO run: the model it started from is "before", its latest checkpoint "after"), or
``world_model`` (one model, or "after" with a ``baseline``). The tokenizer and the IDMs come from the explicit
arguments, else from the run's own config.yaml, else from the shipped Crafter checkpoints.
"""
from __future__ import annotations

import sys
from pathlib import Path

from rlir.assets import resolve as resolve_asset

SHIPPED = Path("checkpoints/crafter")
MODEL_KEYS = {"tokenizer": "tokenizer", "idm": "idm", "eval_idm": "eval_idm"}


class EvalError(ValueError):
    """Bad evaluation input; the message names the argument."""


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


def _run_config_models(run: Path) -> dict:
    """models.tokenizer / idm / eval_idm of a GRPO run's config.yaml (empty when it has none)."""
    import yaml

    config = Path(run) / "config.yaml"
    if not config.is_file():
        return {}
    models = (yaml.safe_load(config.read_text()) or {}).get("models") or {}
    return {key: models[key] for key in MODEL_KEYS if models.get(key)}


def resolve_models(run=None, world_model=None, baseline=None, **paths) -> tuple[dict, dict]:
    """-> ({label: world model path} in report order, {"tokenizer"|"idm"|"eval_idm": path})."""
    from rlir.grpo.trained_world_model import run_base_world_model

    if run is not None:
        if world_model is not None:
            raise EvalError("give --run or --world-model, not both")
        base = baseline or run_base_world_model(run)
        if base is None:
            raise EvalError(f"--run {run} is not a GRPO run (no checkpoints/)")
        models = {"before": resolve_asset(base), "after": Path(run)}
    else:
        model = resolve_asset(world_model or SHIPPED / "ar_world_model")
        models = {"before": resolve_asset(baseline), "after": model} if baseline is not None else {"model": model}
    from_run = _run_config_models(run) if run is not None else {}
    resolved = {key: resolve_asset(paths.get(key) or from_run.get(key) or SHIPPED / key) for key in MODEL_KEYS}
    return models, resolved


def run_eval(data, *, run=None, world_model=None, baseline=None, tokenizer=None, idm=None, eval_idm=None,
             frames: int = 15, prompts: int = 64, temperature: float = 1.0, seed: int = 0, grid: int = 4,
             action_sensitivity: bool = False, all_episodes: bool = False, out=None, command: str = "") -> dict:
    """Evaluate and return the report (see the module docstring); ``out`` defaults to RUN/eval for a run."""
    from rlir.data import Recording
    from rlir.eval import cache
    from rlir.eval.evaluate import HeldOutPrompts, idm_metrics
    from rlir.eval.report import build_report
    from rlir.grpo.trained_world_model import load_world_model
    from rlir.metrics import format_report
    from rlir.models.idm import InverseDynamicsModel
    from rlir.models.loading import load_strict
    from rlir.models.tokenizer import VQTokenizer

    if frames < 1 or prompts < 1:
        raise EvalError("--frames and --prompts must be >= 1")
    from rlir.parallel import init_distributed, quiet_unless_main

    parallel, _ = init_distributed("cpu")
    quiet_unless_main(parallel)
    models, paths = resolve_models(run, world_model, baseline, tokenizer=tokenizer, idm=idm, eval_idm=eval_idm)
    out = Path(out) if out is not None else (Path(run) / "eval" if run is not None else None)
    vq = load_strict(VQTokenizer, paths["tokenizer"], "--tokenizer").eval()
    recording = Recording(data, frame_size=vq.frame_size)  # any recording, at the models' size
    try:
        held_out = HeldOutPrompts.from_recording(recording, prompts, frames, all_episodes)
    except ValueError as error:
        raise EvalError(f"--data: {error}") from None
    idms = {"eval_idm": load_strict(InverseDynamicsModel, paths["eval_idm"], "--eval-idm").eval(),
            "reward_idm": load_strict(InverseDynamicsModel, paths["idm"], "--idm").eval()}

    from rlir.eval.verify import verifier_metrics

    results = {"real": {**idm_metrics(idms, held_out.real, held_out, recording.action_space),
                        **verifier_metrics(held_out.real, held_out.actions, recording.action_space)}}
    videos = {"real": held_out.real}
    info_models = {}
    flags = {"before": "--run" if baseline is None else "--baseline", "after": "--run" if run else "--world-model",
             "model": "--world-model"}  # the argument that named each model
    for label, path in models.items():
        model, info = load_world_model(path, flags[label])
        settings = {"prompts": len(held_out), "frames": frames, "temperature": temperature, "seed": seed,
                    "all_episodes": all_episodes, "action_sensitivity": action_sensitivity, "version": 1}
        folder = (cache.entry(recording.root, path, [paths[k] for k in sorted(paths)], settings)
                  if not parallel.distributed and cache.cacheable(path) else None)
        cached = cache.load(folder) if folder is not None else None
        if cached is not None:
            metrics, videos[label] = cached
            info = {**info, "cached": str(folder)}
        else:
            metrics, videos[label] = _evaluate(model, vq, idms, held_out, recording, parallel, temperature, seed,
                                               action_sensitivity)
            if action_sensitivity:
                nll = {k[len("nll_"):]: v for k, v in metrics.items() if k.startswith("nll_")}
                print(f"{label}: teacher-forced NLL per code " + ", ".join(f"{k} {v:.4f}" for k, v in nll.items()))
            if folder is not None:
                cache.save(folder, metrics, videos[label])
        results[label] = metrics
        info_models[label] = info
        print(f"== {label}: {info['source']}")
        print(format_report(metrics["eval_idm/report"]))

    info = {"prompts": len(held_out), "frames": frames, "temperature": temperature, "seed": seed,
            "data": str(recording.root), "all_episodes": all_episodes, "models": info_models,
            "scoring_models": {k: str(v) for k, v in paths.items()}, "video_rows": list(videos), "command": command}
    report = build_report(results, info=info)
    _print_headline(report)
    if out is not None and parallel.is_main:
        names = [action_names(recording.action_space, a) for a in held_out.actions[:grid]]
        _write_report_files(out, report, videos, names, grid, Path(run) / "metrics.jsonl" if run is not None else None)
    return report


def _print_headline(report: dict) -> None:
    from rlir.eval.report import HEADLINE

    for key, title in HEADLINE:
        if all(v is None for v in report["metrics"][key].values()):
            continue
        print(f"{title:66s} " + "  ".join(f"{k} {v:.4f}" for k, v in report["metrics"][key].items() if v is not None))


def _write_report_files(out: Path, report: dict, videos: dict, names: list, grid: int, metrics_jsonl) -> None:
    """report.md and report.json in ``out``, with the video grid and (for a run) its training curves."""
    from rlir.eval.media import plot_curves, write_video_grid
    from rlir.eval.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    files = {k: p.name for k, p in write_video_grid(out, videos, names, count=grid).items()}
    if metrics_jsonl is not None and metrics_jsonl.is_file() and plot_curves(metrics_jsonl, out / "curves.png"):
        files["curves"] = "curves.png"
    written = write_report(out, report, files)
    print(f"report: {written['md']} (and {written['json'].name}, {', '.join(files.values())})")


def _evaluate(model, vq, idms, held_out, recording, parallel, temperature: float, seed: int,
              action_sensitivity: bool) -> tuple:
    """One world model's metrics (IDMs, PSNR/SSIM, the verifier, optionally action sensitivity) and videos."""
    from rlir.eval.evaluate import evaluate_world_model
    from rlir.eval.verify import verifier_metrics

    metrics, videos = evaluate_world_model(model, vq, idms, held_out, recording.action_space, temperature=temperature,
                                           seed=seed, parallel=parallel)
    metrics.update(verifier_metrics(videos, held_out.actions, recording.action_space))
    if action_sensitivity:
        from rlir.eval.action_sensitivity import action_sensitivity as sensitivity

        nll = sensitivity(model, vq, held_out.real, held_out.actions, recording.action_space.heads[0].classes)
        metrics.update({f"nll_{k}": v for k, v in nll.items()})
    return metrics, videos


def action_names(action_space, actions) -> list[str]:
    """Commanded actions [n, H] of one prompt -> short labels, e.g. 'move_left'."""
    return ["+".join(action_space.class_names(row.tolist()).values()) for row in actions]
