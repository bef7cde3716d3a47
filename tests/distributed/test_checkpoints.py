"""`rlir export` turns a checkpoint's DCP shards (from any number of ranks) into a save_pretrained directory,
and a checkpoint from before DCP (format 1: optimizer in trainer.pt) still resumes in one process."""
import pytest
import torch
from safetensors.torch import load_file

from rlir.cli import main
from rlir.grpo import checkpoint as ckpt
from rlir.models.ar_world_model import ARWorldModel

from .conftest import QUIET, TINY, one_process


def _exported(run, out):
    assert main(["export", str(run), "--out", str(out)]) == 0
    return ARWorldModel.from_pretrained(str(out)).state_dict()


def test_export_reads_the_shards_of_a_one_process_run(tmp_path):
    trainer = one_process(TINY["ar"], tmp_path / "run", [*QUIET, "train.steps=1", "parallel.consolidated_weights=false"])
    step = ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert not (step / "policy.safetensors").exists() and ckpt.is_sharded(step)
    exported = _exported(tmp_path / "run", tmp_path / "model")
    for key, value in trainer.policy.state_dict().items():
        assert torch.equal(exported[key], value), key
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2


@pytest.mark.slow  # the 2-process run
def test_export_of_a_two_rank_fsdp_run_equals_rank_zeros_gathered_weights(two_rank_run, tmp_path):
    run, _ = two_rank_run
    step = ckpt.latest_checkpoint(run / "checkpoints")
    assert (step / "dcp" / "__0_0.distcp").is_file() and (step / "dcp" / "__1_0.distcp").is_file()
    gathered = load_file(str(step / "policy.safetensors"))
    exported = _exported(step, tmp_path / "model")
    assert set(exported) == set(gathered)
    for key in gathered:
        assert torch.equal(exported[key], gathered[key]), key


def test_a_format_one_checkpoint_resumes_in_one_process(tmp_path):
    trainer = one_process(TINY["ar"], tmp_path / "run", [*QUIET, "train.steps=2"], steps=1)
    state = {**trainer.trainer_state(), "optimizer": trainer.optimizer.state_dict()}
    path = ckpt.save_checkpoint(tmp_path / "old", 1, trainer.policy.state_dict(), state)  # no DCP shards
    assert not ckpt.is_sharded(path)
    fresh = one_process(TINY["ar"], tmp_path / "fresh", [*QUIET, "train.steps=2"], steps=0)
    assert fresh.load_checkpoint(path) == 1
    for (k, a), b in zip(trainer.policy.state_dict().items(), fresh.policy.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(fresh.optimizer.state_dict()["state"][0]["exp_avg"],
                       trainer.optimizer.state_dict()["state"][0]["exp_avg"])
