"""benchmarks/run_all.py --dry-run: every stage of the GPU call at tiny sizes on CPU (about 30 s on one thread)."""
import json
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import run_all  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.mark.slow
def test_dry_run_runs_every_stage_writes_results_and_bundles_them(tmp_path):
    out, bundle = tmp_path / "results", tmp_path / "out" / "bench_results.tar.gz"
    status = run_all.main(["--dry-run", "--out", str(out), "--bundle", str(bundle)])
    assert {k: v["status"] for k, v in status.items()} == {
        "rollout": "ok", "grpo_step": "ok", "attention": "ok", "kernels": "ok", "report": "ok"}
    summary = json.loads((out / "run_all_cpu.json").read_text())
    assert summary["dry_run"] and summary["seconds"] < 120  # about 30 s measured; the brief: under a minute
    for name in ("rollout", "grpo_step", "attention", "group_advantage", "token_logprobs", "grpo_loss",
                 "fused_linear_logprobs", "flow_sde_step"):
        payload = json.loads((out / f"{name}_cpu.json").read_text())
        assert payload["rows"] and not any("error" in r and "Unavailable" not in r["error"] for r in payload["rows"]), name
    rollout = json.loads((out / "rollout_cpu.json").read_text())
    assert all(r["same_tokens_as_eager"] for r in rollout["rows"])
    assert "competent" in json.loads((out / "grpo_step_cpu.json").read_text())
    with tarfile.open(bundle) as tar:
        names = set(tar.getnames())
    assert {"results/RESULTS.md", "results/run_all_cpu.json", "results/rollout_cpu.json"} <= names


def test_budget_skips_the_stages_that_do_not_fit(tmp_path):
    status = run_all.main(["--out", str(tmp_path), "--budget-s", "1", "--only", "rollout", "kernels"])
    assert status["rollout"]["status"] == "skipped" and status["kernels"]["status"] == "skipped"
    assert "estimated" in status["rollout"]["reason"]


def test_a_stage_past_its_limit_is_stopped_and_recorded(tmp_path, monkeypatch):
    monkeypatch.setitem(run_all.ESTIMATE_CPU, "attention", 1)  # limit: 2.5x the estimate, here ~2 s
    monkeypatch.setitem(run_all.ESTIMATE_CPU, "kernels_compiled_suite", 10**6)
    status = run_all.main(["--out", str(tmp_path), "--budget-s", "30", "--only", "attention",
                           "--bundle", str(tmp_path / "b.tar.gz")])
    assert status["attention"]["status"] == "failed" and "StageTimeout" in status["attention"]["error"]
    assert status["attention"]["seconds"] < 10 and (tmp_path / "b.tar.gz").exists()


def test_a_stage_that_swallows_the_stop_is_still_stopped_and_recorded(tmp_path, monkeypatch):
    """torch.compile's tracer once caught the StageTimeout and turned it into its own RuntimeError."""
    def swallowing_suite(*args, **kwargs):
        caught = 0
        while caught < 2:  # a library that eats the first stop, then gives up with its own error
            try:
                time.sleep(30)
            except BaseException:  # noqa: BLE001
                caught += 1
        raise RuntimeError("INTERNAL ASSERT FAILED")

    monkeypatch.setitem(run_all.ESTIMATE_CPU, "attention", 1)
    monkeypatch.setitem(run_all.ESTIMATE_CPU, "kernels_compiled_suite", 10**6)
    monkeypatch.setattr(run_all, "run_suite", swallowing_suite)
    status = run_all.main(["--out", str(tmp_path), "--budget-s", "30", "--only", "attention"])
    assert status["attention"]["status"] == "failed" and "StageTimeout" in status["attention"]["error"]
    assert status["attention"]["seconds"] < 10
