"""Atomic checkpoints: a write that fails half-way leaves the previous checkpoint loadable; keep_last works."""
import pytest
import torch

from rlir.grpo import checkpoint as ckpt


def _state(step):
    return {"w": torch.full((3, 2), float(step)), "b": torch.arange(4.0) + step}


def _trainer_state(step):
    return {"step": step, "optimizer": {"state": {0: {"exp_avg": torch.ones(2) * step}}, "param_groups": [{"lr": 0.1,
            "betas": (0.9, 0.99)}]}, "rng": ckpt.rng_state(), "sampler": {"epoch": 1, "cursor": step}}


def test_failed_write_keeps_previous(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root, 1, _state(1), _trainer_state(1), keep_last=3)

    def boom(*args, **kwargs):  # dies after policy.safetensors was written, before trainer.pt
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt.torch, "save", boom)
    with pytest.raises(OSError, match="simulated"):
        ckpt.save_checkpoint(root, 2, _state(2), _trainer_state(2), keep_last=3)
    monkeypatch.undo()

    assert [s for s, _ in ckpt.list_checkpoints(root)] == [1]
    assert sorted(p.name for p in root.iterdir()) == ["step_00000001"]  # no partial or temporary directory
    policy, state, meta = ckpt.load_checkpoint(ckpt.latest_checkpoint(root))
    assert torch.equal(policy["w"], _state(1)["w"]) and state["sampler"]["cursor"] == 1 and meta["step"] == 1


def test_failed_rename_keeps_previous(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root, 1, _state(1), _trainer_state(1))

    def boom(src, dst):
        raise OSError("crash at rename (simulated)")

    monkeypatch.setattr(ckpt.os, "rename", boom)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(root, 2, _state(2), _trainer_state(2))
    monkeypatch.undo()
    assert [p.name for p in root.iterdir()] == ["step_00000001"]
    assert ckpt.load_checkpoint(root / "step_00000001")[2]["step"] == 1


def test_keep_last_and_stale_temporaries(tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / ".tmp-step_00000009-deadbeef").mkdir()  # left by a killed process
    for step in range(1, 6):
        ckpt.save_checkpoint(root, step, _state(step), _trainer_state(step), keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [4, 5]
    assert sorted(p.name for p in root.iterdir()) == ["step_00000004", "step_00000005"]
    # Re-saving an existing step replaces it atomically.
    ckpt.save_checkpoint(root, 5, _state(50), _trainer_state(50), keep_last=2)
    assert ckpt.load_checkpoint(root / "step_00000005")[0]["w"][0, 0].item() == 50.0


def test_tied_weights_and_rng_roundtrip(tmp_path):
    w = torch.randn(4, 4)
    ckpt.save_checkpoint(tmp_path, 1, {"a": w, "b": w}, {"rng": ckpt.rng_state()})
    policy, state, _ = ckpt.load_checkpoint(tmp_path / "step_00000001")
    assert torch.equal(policy["a"], w) and torch.equal(policy["b"], w)
    expected = torch.rand(3)
    ckpt.set_rng_state(state["rng"])
    assert torch.equal(torch.rand(3), expected)
