"""The evaluation report: ``report.json`` for machines, ``report.md`` for people, with the video grid and the
training curves beside them.

``results`` maps a label ("before", "after", or one model's name) to the metrics of
``rlir.eval.evaluate.evaluate_world_model``; "real" holds the IDMs' scores on the real frames (the ceiling).
With two models, every metric gets before / after / delta.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Optional

import numpy as np

HEADLINE = (
    ("verifier/scroll_fidelity", "Crafter verifier: moves that scroll the commanded way (ties miss)"),
    ("verifier/scroll_decided", "verifier: the same, of the moves it could call"),
    ("verifier/stillness", "verifier: non-moves that do not scroll"),
    ("verifier/blocked_aware", "verifier: moves that do what Crafter's rules say (blocked stays)"),
    ("verifier/facing", "verifier: sprite faces the commanded move"),
    ("verifier/content", "verifier: share of world tiles not grass"),
    ("eval_idm/frame_accuracy", "action-following, eval IDM (never a reward)"),
    ("eval_idm/macro_precision", "eval IDM macro precision (per action group, averaged)"),
    ("eval_idm/macro_recall", "eval IDM macro recall"),
    ("eval_idm/macro_f1", "eval IDM macro F1 (MineWorld / the paper)"),
    ("reward_idm/frame_accuracy", "action-following, reward IDM"),
    ("psnr_db", "PSNR vs the real continuation (dB)"),
    ("ssim", "SSIM vs the real continuation"),
)


def source_commit() -> Optional[str]:
    """The git commit of the rlir source that made a report ("-dirty" when tracked files differ from it); None
    outside a git checkout (an installed wheel)."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "diff", "--quiet", "HEAD", "--", "rlir", "configs",
                                "checkpoints"], timeout=10).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def _finite(value) -> Optional[float]:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def build_report(results: Dict[str, dict], *, info: dict) -> dict:
    """The machine-readable report: {"metrics": {name: {label: value, ..., "delta": after - before}}, ...}."""
    labels = [k for k in results if k != "real"]
    metrics: Dict[str, dict] = {}
    for key, _ in HEADLINE:
        row = {label: _finite(results[label].get(key)) for label in labels}
        if key in results.get("real", {}):
            row["real"] = _finite(results["real"][key])
        if {"before", "after"} <= set(labels) and None not in (row["before"], row["after"]):
            row["delta"] = row["after"] - row["before"]
            clusters = [results[label].get(f"per_prompt/{key}") for label in ("before", "after")]
            if None not in clusters:
                row["delta_se"] = paired_delta_se(*clusters)
        metrics[key] = row
    per_action = {label: results[label]["eval_idm/report"].to_json()
                  for label in labels if "eval_idm/report" in results[label]}
    report = {**info, "commit": source_commit(), "metrics": metrics, "eval_idm_per_action": per_action}
    per_frame = {label: results[label]["verifier/per_frame"] for label in results if "verifier/per_frame" in results[label]}
    if per_frame:
        report["verifier_per_frame"] = per_frame
    # rlir eval --action-sensitivity: teacher-forced NLL per code under each variant of the actions
    sensitivity = {label: {k[len("nll_"):]: float(v) for k, v in results[label].items() if k.startswith("nll_")}
                   for label in labels}
    if any(sensitivity.values()):
        report["action_sensitivity_nll"] = {label: nll for label, nll in sensitivity.items() if nll}
    return report


def paired_delta_se(before: dict, after: dict) -> Optional[float]:
    """Standard error of after - before for a share pooled over prompts ({"hits": [K], "count": [K]} each, the same
    prompts and counts): prompts are the independent units, so it is the cluster-robust (ratio-estimator) SE of
    the paired per-prompt differences. It is the noise of a reported delta at this many prompts."""
    count = np.asarray(before["count"], dtype=np.float64)
    differences = np.asarray(after["hits"], dtype=np.float64) - np.asarray(before["hits"], dtype=np.float64)
    k, total = len(count), count.sum()
    if k < 2 or total == 0:
        return None
    delta = differences.sum() / total
    return float(np.sqrt(k / (k - 1) * ((differences - delta * count) ** 2).sum()) / total)


def _cell(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _signed(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:+.{digits}f}"


def per_action_table(report: dict, labels) -> list[str]:
    """Markdown: per class of each head, support and F1 (and precision/recall) per model."""
    lines = []
    heads = report["eval_idm_per_action"]
    first = heads[labels[0]]["heads"]
    for h, head in enumerate(first):
        header = "| class | support | " + " | ".join(f"{lab} P / R / F1" for lab in labels) + " |"
        macro = ", ".join(f"{lab} {_cell(heads[lab]['heads'][h]['macro_precision'], 2)} / "
                          f"{_cell(heads[lab]['heads'][h]['macro_recall'], 2)} / {_cell(heads[lab]['heads'][h]['macro_f1'], 2)}"
                          for lab in labels)
        lines += [f"Head `{head['name']}` (macro P / R / F1: {macro}):", "", header, "|---|---:|" + "---:|" * len(labels)]
        for name, values in head["classes"].items():
            if values["support"] == 0 and all(heads[lab]["heads"][h]["classes"][name]["precision"] is None
                                              for lab in labels):
                continue
            cells = []
            for lab in labels:
                v = heads[lab]["heads"][h]["classes"][name]
                cells.append(f"{_cell(v['precision'], 2)} / {_cell(v['recall'], 2)} / {_cell(v['f1'], 2)}")
            lines.append(f"| {name} | {values['support']} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def action_sensitivity_table(nll: Dict[str, Dict[str, float]]) -> list[str]:
    """Markdown: teacher-forced NLL per code of the real continuation under each variant of the actions; a
    model that uses its actions scores the true ones lowest."""
    variants = list(next(iter(nll.values())))
    lines = ["## Action sensitivity (teacher-forced NLL per code, nats)", "",
             "| model | " + " | ".join(variants) + " |", "|---|" + "---:|" * len(variants)]
    lines += [f"| {label} | " + " | ".join(_cell(values.get(v), 4) for v in variants) + " |"
              for label, values in nll.items()]
    return lines + [""]


def verifier_per_frame_table(per_frame: Dict[str, Dict[str, list]]) -> list[str]:
    """Markdown: the verifier's scroll fidelity (ties miss) and content per generated frame position."""
    labels = list(per_frame)
    positions = len(next(iter(per_frame.values()))["scroll_fidelity"])
    lines = ["## Crafter verifier per frame position", "",
             "Scroll fidelity on moves (ties miss) / share of world tiles not grass, at each generated frame.", "",
             "| frame | " + " | ".join(labels) + " |", "|---:|" + "---:|" * len(labels)]
    for t in range(positions):
        cells = [f"{_cell(per_frame[lab]['scroll_fidelity'][t], 2)} / {_cell(per_frame[lab]['content'][t], 2)}"
                 for lab in labels]
        lines.append(f"| {t + 1} | " + " | ".join(cells) + " |")
    return lines + [""]


def markdown(report: dict, files: Dict[str, str]) -> str:
    labels = [k for k in next(iter(report["metrics"].values())) if k not in ("real", "delta", "delta_se")]
    compare = "delta" in json.dumps(report["metrics"])
    lines = [f"# World-model evaluation: {', '.join(labels)}", ""]
    lines.append(f"{report['prompts']} held-out prompts, 1 real context frame, {report['frames']} generated frames, "
                 f"temperature {report['temperature']}, seed {report['seed']}.")
    for label, model in report.get("models", {}).items():
        lines.append(f"- **{label}**: `{model['source']}`" + (f" (GRPO step {model['step']})" if model.get("step") else ""))
    lines += ["", "| metric | " + " | ".join(labels) + (" | delta" if compare else "") + " | real frames |",
              "|---|" + "---:|" * (len(labels) + (2 if compare else 1))]
    for key, title in HEADLINE:
        row = report["metrics"][key]
        if all(v is None for v in row.values()):
            continue  # e.g. the verifier's rows for a game that is not Crafter
        cells = [_cell(row.get(lab)) for lab in labels]
        if compare:
            se = row.get("delta_se")
            cells.append(_signed(row.get("delta")) + ("" if se is None else f" ± {se:.3f}"))
        cells.append(_cell(row.get("real")))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines.append("")
    if report.get("verifier_per_frame"):
        lines += verifier_per_frame_table(report["verifier_per_frame"])
    if "curves" in files:
        lines += ["## Training", "", f"![training curves]({files['curves']})", ""]
    if "gif" in files:
        lines += ["## Videos", "", f"Rows: {', '.join(report.get('video_rows', labels))}; the commanded action is "
                  "written above each generated frame.", "", f"![video grid]({files['gif']})", "",
                  f"Filmstrip: [{files['png']}]({files['png']}) · MP4: [{files['mp4']}]({files['mp4']})", ""]
    if report.get("eval_idm_per_action"):
        lines += ["## Per-action precision / recall / F1 (eval IDM on generated frames)", ""]
        lines += per_action_table(report, [lab for lab in labels if lab in report["eval_idm_per_action"]])
    if report.get("action_sensitivity_nll"):
        lines += action_sensitivity_table(report["action_sensitivity_nll"])
    if report.get("command"):
        lines += [f"Reproduce (rlir at commit `{report.get('commit') or 'unknown'}`):", "", "```", report["command"],
                  "```", ""]
    return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_report(out_dir, report: dict, files: Dict[str, str]) -> Dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md"}
    _atomic_write(paths["json"], json.dumps(report, indent=1, default=_json_default))
    _atomic_write(paths["md"], markdown(report, files))
    return paths


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
