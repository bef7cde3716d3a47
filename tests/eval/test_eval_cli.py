"""`rlir eval` end to end: the shipped Crafter checkpoints on a tiny fresh recording."""
import json

from rlir.cli import main
from rlir.data import record


def test_eval_writes_a_report(tmp_path):
    data = tmp_path / "rec"
    record("crafter", data, episodes=2, steps=12, seed=3, progress=False)
    out = tmp_path / "report.json"
    assert main(["eval", "--data", str(data), "--frames", "3", "--prompts", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["prompts"] >= 1 and report["frames"] == 3
    for key in ("eval_idm_generated_frame_accuracy", "eval_idm_real_frame_accuracy",
                "reward_idm_generated_frame_accuracy", "reward_idm_real_frame_accuracy"):
        assert 0.0 <= report[key] <= 1.0
    assert report["psnr_db"] > 0
    assert report["eval_idm_generated_report"]["count"] == report["prompts"] * 3
