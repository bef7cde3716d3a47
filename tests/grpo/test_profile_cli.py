"""`rlir profile` on the tiny config: a Chrome trace with the loop's phases, and the Nsight command."""
import json

import torch

from rlir.cli import main
from rlir.profiling.phases import PhaseTimer

# Every phase of one single-process step of tiny_ar.yaml with recomputed old log-probs (beta > 0 adds
# logprob_ref); "comm" runs only under torchrun.
TINY_STEP_PHASES = {"data", "rollout", "decode", "reward", "advantage", "logprob_old", "logprob_ref", "logprob",
                    "loss", "backward", "optim"}


def test_profile_writes_a_trace_with_the_phases(tmp_path, capsys):
    assert main(["profile", "--config", "configs/tiny_ar.yaml", "--steps", "1", "--out", str(tmp_path),
                 "loss.old_logprobs=recompute"]) == 0
    trace = json.loads((tmp_path / "trace.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert any("aten::" in str(name) for name in names)
    # Each phase is a record_function range in the trace (beside its NVTX range), with the loop's ops inside.
    assert TINY_STEP_PHASES <= names, sorted(TINY_STEP_PHASES - names)
    ranges = {e["name"]: e for e in trace["traceEvents"] if e.get("name") in TINY_STEP_PHASES and e.get("ph") == "X"}
    assert ranges.keys() == TINY_STEP_PHASES
    assert all(e["dur"] > 0 for e in ranges.values())
    printed = capsys.readouterr().out
    assert "nsys profile" in printed and "--trace=cuda,nvtx" in printed and "configs/tiny_ar.yaml" in printed


def test_profile_rejects_zero_steps(tmp_path):
    assert main(["profile", "--config", "configs/tiny_ar.yaml", "--steps", "0", "--out", str(tmp_path)]) == 2


def test_phases_are_record_function_ranges_under_the_profiler():
    timer = PhaseTimer()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with timer.phase("rollout"):
            torch.ones(4).sum()
        with timer.phase("loss"):
            torch.ones(4).mul(2)
    assert {"rollout", "loss"} <= {event.key for event in prof.key_averages()}
    assert list(timer.breakdown()) == ["rollout", "loss"]
