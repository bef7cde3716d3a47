"""benchmarks/report.py renders bench_verl.py's committed results (both paths per case, their ratios)."""
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import report  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "verl_cpu.json"


def test_report_shows_the_verl_ratios(tmp_path):
    shutil.copy(RESULTS, tmp_path / RESULTS.name)
    report.main(["--results", str(tmp_path)])
    text = (tmp_path / "RESULTS.md").read_text()
    payload = json.loads(RESULTS.read_text())
    assert f"verl {payload['verl']};" in text
    for case, ratio in payload["ratios_rlir_over_verl"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {case} |"))
        assert f"{ratio['time']:.2f}x" in row and f"{ratio['peak_memory']:.2f}x" in row
