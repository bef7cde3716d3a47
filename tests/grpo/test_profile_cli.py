"""`rlir profile` on the tiny config: a Chrome trace with the loop's phases, and the Nsight command."""
import json

from rlir.cli import main


def test_profile_writes_a_trace_with_the_phases(tmp_path, capsys):
    assert main(["profile", "--config", "configs/tiny_ar.yaml", "--steps", "1", "--out", str(tmp_path)]) == 0
    trace = json.loads((tmp_path / "trace.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert any("aten::" in str(name) for name in names)
    printed = capsys.readouterr().out
    assert "nsys profile" in printed and "--trace=cuda,nvtx" in printed and "configs/tiny_ar.yaml" in printed


def test_profile_rejects_zero_steps(tmp_path):
    assert main(["profile", "--config", "configs/tiny_ar.yaml", "--steps", "0", "--out", str(tmp_path)]) == 2
