#!/usr/bin/env python
"""The README's result tables, regenerated from the committed reports (docs/**/report.json).

    python scripts/results_tables.py           # print the tables
    python scripts/results_tables.py --write   # rewrite them in README.md between their markers
    python scripts/results_tables.py --check   # exit 1 if README.md differs from the reports

Each table sits between `<!-- table:NAME -->` and `<!-- /table:NAME -->` in README.md; NAME is a folder under docs/
whose subfolders each hold one report.json (one `rlir eval` or `rlir quickstart`). Every row names its report
and the commit that made it, so each figure in the README traces back to a file and a command.
"""
import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = (
    ("verifier/scroll_fidelity", "scroll fidelity (ties miss)", 3),
    ("verifier/stillness", "stillness", 2),
    ("verifier/blocked_aware", "blocked-aware", 2),
    ("verifier/content", "non-grass tiles", 2),
    ("eval_idm/frame_accuracy", "eval IDM", 3),
    ("reward_idm/frame_accuracy", "reward IDM", 3),
    ("psnr_db", "PSNR dB", 2),
    ("ssim", "SSIM", 3),
)


def _cell(value, digits, se=None, signed=False) -> str:
    if value is None:
        return "–"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text if se is None else f"{text} ± {se:.{digits}f}"


def table(folder: Path) -> str:
    reports = sorted(folder.glob("*/report.json"))
    if not reports:
        raise SystemExit(f"results_tables: no report.json under {folder}")
    header = "| report | model | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [header, "|---|---|" + "---:|" * len(COLUMNS)]
    for path in reports:
        report = json.loads(path.read_text())
        metrics = report["metrics"]
        labels = [k for k in metrics["ssim"] if k not in ("delta", "delta_se")]
        labels = (["real"] if "real" in metrics["eval_idm/frame_accuracy"] else []) + labels
        if "delta" in metrics["ssim"]:
            labels.append("delta")
        name = f"[{path.parent.name}]({path.parent.relative_to(ROOT).as_posix()}/report.md)"
        commit = report.get("commit") or "unknown"
        commit = commit[:10] + ("-dirty" if commit.endswith("-dirty") else "")
        for label in labels:
            delta = label == "delta"
            cells = [_cell(metrics[key].get(label), digits, metrics[key].get("delta_se") if delta else None, delta)
                     for key, _, digits in COLUMNS]
            shown = f"{label} (`{commit}`)" if label in ("after", "model") else label
            lines.append(f"| {name} | {shown} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the tables in README.md")
    parser.add_argument("--check", action="store_true", help="fail if README.md's tables differ from the reports")
    args = parser.parse_args(argv)
    readme = (ROOT / "README.md").read_text()
    pattern = re.compile(r"(<!-- table:(\S+) -->)\n(.*?)(<!-- /table:\2 -->)", re.S)
    rebuilt = pattern.sub(lambda m: m.group(1) + "\n" + table(ROOT / "docs" / m.group(2)) + "\n" + m.group(4), readme)
    if args.check:
        if rebuilt != readme:
            print("README.md's result tables differ from docs/**/report.json: run scripts/results_tables.py --write")
            return 1
        return 0
    if args.write:
        (ROOT / "README.md").write_text(rebuilt)
    else:
        for match in pattern.finditer(rebuilt):
            print(f"## {match.group(2)}\n{match.group(3)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
