"""After a plain (non-editable) `pip install .`, `rlir quickstart` runs from an empty directory outside the clone:
the shipped configs and checkpoints come from the installed package, and data/ and runs/ land in the cwd."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlir.data import record

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_from_an_empty_directory_after_a_plain_install(tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(REPO)], check=True, capture_output=True)
    assert (site / "rlir" / "configs" / "crafter_ar.yaml").is_file()
    assert (site / "rlir" / "checkpoints" / "crafter" / "ar_world_model" / "config.json").is_file()

    work = tmp_path / "empty"
    work.mkdir()
    record("crafter", work / "data" / "crafter", episodes=4, steps=24, seed=0, progress=False)
    record("crafter", work / "data" / "crafter_unseen", episodes=2, steps=24, seed=10_000, progress=False)
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    tiny = ["rollout.prompts_per_step=1", "rollout.group_size=2", "rollout.n_frames=2", "eval.prompts=2",
            "train.micro_batch_size=2", "train.grad_accumulation=1", "data.stride=8"]
    result = subprocess.run([sys.executable, "-m", "rlir", "quickstart", "--steps", "1", "--prompts", "2",
                             "--frames", "2", *tiny], cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((work / "runs" / "quickstart" / "eval" / "report.json").read_text())
    assert str(site) in report["scoring_models"]["tokenizer"]  # the installed copy, not the clone's
    assert report["metrics"]["eval_idm/frame_accuracy"]["after"] is not None
