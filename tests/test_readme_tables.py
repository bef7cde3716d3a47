"""The README's result tables are the committed reports' numbers (scripts/results_tables.py regenerates them)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_tables_match_the_committed_reports():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "results_tables.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
