"""`torchrun --nproc_per_node 2 -m rlir eval`: the held-out prompts are split over the ranks and the videos
gathered; rank 0 writes one report over all of them (the shipped Crafter checkpoints on a tiny recording)."""
import json

import pytest

from rlir.cli import main

from .conftest import torchrun

pytestmark = pytest.mark.slow  # torchrun jobs of 2 processes: 10-30 s on 2 CPU cores


def test_eval_on_two_ranks_reports_every_prompt_once(crafter_recording, tmp_path):
    args = ["eval", "--data", crafter_recording, "--frames", "2", "--prompts", "3", "--grid", "3"]
    done = torchrun(["-m", "rlir", *args, "--out", tmp_path / "two"])
    assert done.returncode == 0, done.stdout[-6000:]
    assert done.stdout.count("report: ") == 1  # rank 0 alone prints and writes
    assert main([*map(str, args), "--out", str(tmp_path / "one")]) == 0
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    assert two["prompts"] == one["prompts"] == 3  # 2 prompts on rank 0, 1 on rank 1, gathered
    assert two["eval_idm_per_action"]["model"]["count"] == 3 * 2
    for key in ("eval_idm/frame_accuracy", "reward_idm/frame_accuracy"):  # the real frames: no sampling
        assert two["metrics"][key]["real"] == one["metrics"][key]["real"]
    assert 0.0 <= two["metrics"]["eval_idm/frame_accuracy"]["model"] <= 1.0
    assert (tmp_path / "two" / "video_grid.png").stat().st_size > 0
