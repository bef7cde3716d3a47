"""``run_eval``: the whole of ``rlir eval`` as a function (the CLI and ``rlir quickstart`` call it).

Each held-out prompt is a real first frame plus the next ``frames`` real commanded actions. Every world model
generates the frames through ``Policy.generate`` with the evaluation sampler; the evaluation IDM (never a
reward) and the reward IDM read the actions back; PSNR and SSIM compare the generated frames with the real
continuation; on Crafter, the verifier (``rlir.eval.verify``, no learned model) checks each transition's scroll,
facing and blocked moves against the game's rules. The same IDMs and verifier on the real frames give the ceiling. With ``out``, writes report.json, report.md,
a video grid (PNG, MP4, GIF) and, for a GRPO run, its training curves.

Which models: ``run`` (a GRPO run: the model it started from is "before", its latest checkpoint "after"), or
``world_model`` (one model, or "after" with a ``baseline``). The tokenizer and the IDMs come from the explicit
arguments, else from the run's own config.yaml, else from the shipped Crafter checkpoints.
"""
from __future__ import annotations

from pathlib import Path

from rlir.assets import resolve as resolve_asset

SHIPPED = Path("checkpoints/crafter")
MODEL_KEYS = {"tokenizer": "tokenizer", "idm": "idm", "eval_idm": "eval_idm"}


class EvalError(ValueError):
    """Bad evaluation input; the message names the argument."""


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
    from rlir.eval.media import plot_curves, write_video_grid
    from rlir.eval.report import HEADLINE, build_report, write_report
    from rlir.grpo.trained_world_model import load_world_model
    from rlir.metrics import format_report
    from rlir.models.idm import InverseDynamicsModel
    from rlir.models.loading import load_strict
    from rlir.models.tokenizer import VQTokenizer

    if frames < 1 or prompts < 1:
        raise EvalError("--frames and --prompts must be >= 1")
    from rlir.parallel import init_distributed, quiet_unless_main

    # Under torchrun: every rank generates its share of the prompts, rank 0 reports (rlir.eval.evaluate).
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
    for key, title in HEADLINE:
        if all(v is None for v in report["metrics"][key].values()):
            continue
        print(f"{title:66s} " + "  ".join(f"{k} {v:.4f}" for k, v in report["metrics"][key].items() if v is not None))
    if out is None or not parallel.is_main:
        return report
    out.mkdir(parents=True, exist_ok=True)
    names = [action_names(recording.action_space, a) for a in held_out.actions[:grid]]
    files = {k: p.name for k, p in write_video_grid(out, videos, names, count=grid).items()}
    metrics_jsonl = Path(run) / "metrics.jsonl" if run is not None else None
    if metrics_jsonl is not None and metrics_jsonl.is_file() and plot_curves(metrics_jsonl, out / "curves.png"):
        files["curves"] = "curves.png"
    written = write_report(out, report, files)
    print(f"report: {written['md']} (and {written['json'].name}, {', '.join(files.values())})")
    return report


def _evaluate(model, vq, idms, held_out, recording, parallel, temperature: float, seed: int,
              action_sensitivity: bool) -> tuple:
    """One world model's metrics (IDMs, PSNR/SSIM, the verifier, optionally action sensitivity) and videos."""
    from rlir.eval.evaluate import evaluate_world_model
    from rlir.eval.verify import verifier_metrics
    from rlir.grpo.distributed import evaluate_sharded

    evaluate = evaluate_sharded(parallel) if parallel.distributed else evaluate_world_model
    metrics, videos = evaluate(model, vq, idms, held_out, recording.action_space, temperature=temperature, seed=seed)
    metrics.update(verifier_metrics(videos, held_out.actions, recording.action_space))
    if action_sensitivity:
        from rlir.eval.action_sensitivity import action_sensitivity as sensitivity

        nll = sensitivity(model, vq, held_out.real, held_out.actions, recording.action_space.heads[0].classes)
        metrics.update({f"nll_{k}": v for k, v in nll.items()})
    return metrics, videos


def action_names(action_space, actions) -> list[str]:
    """Commanded actions [n, H] of one prompt -> short labels, e.g. 'move_left'."""
    return ["+".join(action_space.class_names(row.tolist()).values()) for row in actions]
