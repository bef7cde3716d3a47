"""`rlir kernels check` from a plain shell (no TRITON_INTERPRET set): every kernel matches its reference."""
import os
import subprocess
import sys

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path (Triton interpreter) is what this checks")
def test_kernels_check_passes_from_a_plain_environment():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "RLIR_KERNELS")}
    out = subprocess.run([sys.executable, "-m", "rlir", "kernels", "check"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all kernels match their references" in out.stdout
    ops = ("group_advantage", "idm_reward", "token_logprobs (+grad)", "grpo_loss_from_logits (+grad)",
           "flow_sde_step (+grad)", "fused_linear_logprobs (+grad)")
    assert out.stdout.count("ok  ") == len(ops)
    for op in ops:
        assert f"ok   {op} " in out.stdout, op
