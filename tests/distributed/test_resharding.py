"""Checkpoints reshard: a run saved by 2 ranks resumes in 1 process, one saved by 1 process resumes on 2
ranks, one saved under DDP resumes under FSDP, and the later steps equal those of an uninterrupted run (DCP
shards of the world model and AdamW state, plus the sampler, schedule and step)."""
import pytest

from .conftest import QUIET, TINY, assert_close_metrics, assert_close_weights, final_weights, metrics, one_process, \
    run_jobs

pytestmark = pytest.mark.slow  # torchrun jobs of 2 processes: 10-30 s on 2 CPU cores

RUN = [*QUIET, "train.steps=4", "train.checkpoint_interval=2", "train.keep_last=5"]


def test_save_on_two_ranks_resume_on_one_and_the_reverse(tmp_path):
    config = TINY["ar"]
    reference = tmp_path / "uninterrupted"
    one_process(config, reference, RUN)
    two_to_one, one_to_two, ddp_to_fsdp = tmp_path / "two_to_one", tmp_path / "one_to_two", tmp_path / "ddp_to_fsdp"

    # Steps 1-2, then stop: on 2 ranks (FSDP and DDP) and in one process.
    run_jobs(tmp_path, [
        {"config": config, "out": two_to_one, "overrides": [*RUN, "parallel.strategy=fsdp"], "steps": 2},
        {"config": config, "out": ddp_to_fsdp, "overrides": [*RUN, "parallel.strategy=ddp"], "steps": 2},
    ])
    one_process(config, one_to_two, RUN, steps=2)
    assert (two_to_one / "checkpoints" / "step_00000002" / "dcp" / "__1_0.distcp").is_file()  # rank 1's shards

    # Steps 3-4 resumed: in one process, and on 2 ranks.
    one_process(config, two_to_one, RUN, resume=True)
    run_jobs(tmp_path, [
        {"config": config, "out": one_to_two, "overrides": [*RUN, "parallel.strategy=fsdp"], "resume": True},
        {"config": config, "out": ddp_to_fsdp, "overrides": [*RUN, "parallel.strategy=fsdp"], "resume": True},
    ])

    expected = metrics(reference)
    assert [r["step"] for r in expected] == [0, 1, 2, 3, 4]
    for r in expected[3:]:
        assert r["adv/abs_max"] > 0 and r["optim/grad_norm"] > 0  # the resumed steps learn
    for run in (two_to_one, one_to_two, ddp_to_fsdp):
        assert_close_metrics(expected, metrics(run))  # steps 0-2 logged before the stop, 3-4 after the resume
        assert_close_weights(final_weights(reference), final_weights(run))
