"""`torchrun --nproc_per_node 2 -m rlir train`: rank 0 alone logs (stdout, metrics.jsonl, TensorBoard) and
writes the run's files, with the metrics of the whole job (every rank's videos), not of one rank."""
import json

import pytest

from .conftest import LOGGED_RUN, TINY, assert_close_metrics, metrics, one_process

pytestmark = pytest.mark.slow  # torchrun jobs of 2 processes: 10-30 s on 2 CPU cores


def test_only_rank_zero_logs_global_metrics(two_rank_run, tmp_path):
    two, out = two_rank_run
    for line in ("step 1/2 | reward", "step 2/2 | reward", "eval step 0 |", "rlir train: done at step 2"):
        assert out.count(line) == 1, (line, out[-3000:])
    lines = (two / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2]
    assert len(list((two / "tb").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in two.iterdir()) == ["checkpoints", "config.yaml", "metrics.jsonl", "tb"]
    # The metrics are the job's: equal to one process running the same global batch...
    one_process(TINY["ar"], tmp_path / "one", LOGGED_RUN)
    assert_close_metrics(metrics(tmp_path / "one"), metrics(two))
    # ...and the throughput counts every rank's videos (B x G = 8 a step).
    step = json.loads(lines[1])
    assert abs(step["perf/videos_per_s"] * step["time/step"] - 8) < 1e-6
    assert step["time/comm"] >= 0.0
