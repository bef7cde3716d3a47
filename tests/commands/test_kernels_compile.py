"""`rlir kernels compile`: every Triton kernel compiles for sm_90 (H100) without a GPU, with zero spills."""
import json
import subprocess
import sys

import pytest

from rlir.kernels._common import HAS_TRITON
from rlir.kernels._compile import _parse_ptxas_log, all_kernels

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="needs triton (it ships ptxas)")


def test_every_kernel_compiles_for_sm90_without_spills(tmp_path):
    # Run as a user would; the test session's TRITON_INTERPRET=1 makes the command re-exec itself without it.
    out = tmp_path / "builds.json"
    run = subprocess.run([sys.executable, "-m", "rlir", "kernels", "compile", "--arch", "90", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    builds = json.loads(out.read_text())
    assert {b["kernel"] for b in builds} == set(all_kernels())
    assert {b["arch"] for b in builds} == {90}
    spilling = [b for b in builds if b["spill_stores"] or b["spill_loads"] or b["stack_bytes"]]
    assert not spilling, spilling
    assert all(0 < b["registers"] <= 255 for b in builds)
    assert "no spills" in run.stdout


def test_ptxas_log_parsing():
    log = ("ptxas info    : Function properties for _k\n"
           "    8 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers\n")
    assert _parse_ptxas_log(log, "_k") == dict(registers=255, stack_bytes=8, spill_stores=12, spill_loads=16)
    with pytest.raises(RuntimeError, match="registers"):
        _parse_ptxas_log("ptxas info    : nothing", "_k")
