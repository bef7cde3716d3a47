"""Host syncs per GRPO step: at most 5, and flat in micro-batch size, frames, denoising steps and inner epochs.

A host sync is counted as the issue defines it: a call of ``Tensor.item``, ``bool(tensor)``, ``float(tensor)``,
``int(tensor)``, ``tolist`` or ``nonzero`` during one ``GRPOTrainer.step`` (each reads device memory back on a
GPU, stalling the launch queue). The optimiser's CPU-side step counter would not count; the fused AdamW the
trainer uses keeps it on the device anyway. Calls made inside the prompt sampler (the data phase, which reads
its CPU-resident permutation and synthetic clips: host data by design, never on the device) are reported
apart. The counted step follows one warm-up step, as every step of a run after the first does (the first
also builds the lazy reference model and the diffusion schedule once).
"""
import collections
import contextlib
import traceback
from pathlib import Path

import pytest
import torch
import yaml

from rlir.grpo import config_from_dict
from rlir.grpo.builders import build_run
from rlir.grpo.trainer import GRPOTrainer
from rlir.kernels import trusted_inputs
from rlir.kernels._common import check_index_range

REPO = Path(__file__).resolve().parents[2]
READS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "nonzero")
BUDGET = 5


@contextlib.contextmanager
def count_host_reads():
    """Patch the Tensor methods that read values back; yields a Counter of (method, file:line, phase)."""
    counts = collections.Counter()
    state = {"phase": "step"}
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name, original):
        def counted(self, *args, **kwargs):
            caller = traceback.extract_stack(limit=2)[0]
            if "torch/optim/" not in caller.filename:
                counts[(name, f"{Path(caller.filename).name}:{caller.lineno}", state["phase"])] += 1
            return original(self, *args, **kwargs)
        return counted

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        yield counts, state
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def tiny_trainer(config: str, micro_batch_size: int, n_frames: int, device: str = "cpu", **sections) -> GRPOTrainer:
    data = yaml.safe_load((REPO / "configs" / f"{config}.yaml").read_text())
    data["device"] = device
    data["log"] = {"tensorboard": False, "stdout": False, "jsonl": False}
    data["train"].update({"micro_batch_size": micro_batch_size, "eval_interval": 0, "checkpoint_interval": 0,
                          "steps": 2})
    data["rollout"]["n_frames"] = n_frames
    for section, values in sections.items():
        for key, value in values.items():
            if isinstance(value, dict):
                data[section].setdefault(key, {}).update(value)
            else:
                data[section][key] = value
    cfg = config_from_dict(data)
    run = build_run(cfg, torch.device(device))
    return GRPOTrainer(cfg, run.policy, run.idm, run.prompts, device=torch.device(device))


def host_reads_of_one_step(trainer: GRPOTrainer):
    """(total, outside the data phase, Counter) for the step after a warm-up step."""
    trainer.step()
    sampler_next = trainer.prompts.next

    with count_host_reads() as (counts, state):
        def next_in_data_phase():
            state["phase"] = "data"
            try:
                return sampler_next()
            finally:
                state["phase"] = "step"

        trainer.prompts.next = next_in_data_phase
        try:
            trainer.step()
        finally:
            del trainer.prompts.next
    total = sum(counts.values())
    outside = sum(n for (_, _, phase), n in counts.items() if phase != "data")
    return total, outside, counts


VARIANTS = {
    "tiny_ar": [dict(micro_batch_size=m, n_frames=n) for m in (1, 4) for n in (2, 3)]
    + [dict(micro_batch_size=2, n_frames=3, train={"inner_epochs": 1})],
    "tiny_diffusion": [dict(micro_batch_size=m, n_frames=n) for m in (1, 4) for n in (2, 3)]
    + [dict(micro_batch_size=2, n_frames=3, train={"inner_epochs": 1}),
       dict(micro_batch_size=2, n_frames=3, rollout={"sde": {"num_steps": 5}})],
}


@pytest.mark.parametrize("config", list(VARIANTS))
def test_one_step_has_at_most_five_host_syncs_flat_in_batching_frames_steps_and_epochs(config):
    seen = {}
    for variant in VARIANTS[config]:
        variant = dict(variant)
        trainer = tiny_trainer(config, variant.pop("micro_batch_size"), variant.pop("n_frames"), **variant)
        total, outside, counts = host_reads_of_one_step(trainer)
        where = "\n".join(f"{n} x {key}" for key, n in counts.most_common())
        assert total <= BUDGET, f"{config} {variant}: {total} host reads in a step (budget {BUDGET}):\n{where}"
        # Outside the sampler's host data: the rollout's one validation read and the metrics' one read.
        assert outside <= 2, f"{config} {variant}: {outside} host reads outside the data phase:\n{where}"
        seen[str(variant)] = outside
    assert len(set(seen.values())) == 1, f"the count changes with the settings: {seen}"


def test_values_are_still_checked_at_the_boundary():
    trainer = tiny_trainer("tiny_ar", 2, 3)
    prompts = trainer.prompts.next()
    prompts.actions[0, 0, 0] = 99
    with pytest.raises(ValueError, match="actions must hold class indices"):
        trainer.policy.rollout(prompts, 2)
    ids = torch.tensor([0, 7])
    with pytest.raises(ValueError, match="must lie in"):
        check_index_range("ids", ids, 5)
    with trusted_inputs():  # internal calls skip the host read
        check_index_range("ids", ids, 5)
    with pytest.raises(ValueError, match="must lie in"):
        check_index_range("ids", ids, 5)


@pytest.mark.interpreter
@pytest.mark.parametrize("config", list(VARIANTS))
def test_the_triton_kernel_paths_add_no_host_syncs(config, monkeypatch):
    """The same count with every op on its Triton kernel (the GPU path, here under the interpreter)."""
    monkeypatch.setenv("RLIR_KERNELS", "triton")
    total, outside, counts = host_reads_of_one_step(tiny_trainer(config, 2, 3))
    assert total <= BUDGET and outside <= 2, counts


def test_phase_timer_synchronises_only_under_a_profiler(monkeypatch):
    from rlir.profiling import PhaseTimer
    from rlir.profiling.phases import profiling_active

    monkeypatch.delenv("RLIR_SYNC_PHASES", raising=False)
    assert not profiling_active()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
        assert profiling_active()
    monkeypatch.setenv("RLIR_SYNC_PHASES", "1")
    assert profiling_active()
    timer = PhaseTimer()
    with timer.phase("a"):
        torch.ones(3).sum()
    with timer.phase("b"):
        pass
    with timer.phase("a"):
        pass
    assert list(timer.breakdown()) == ["a", "b"] and timer.total() >= 0


@pytest.mark.gpu
def test_phase_timer_on_cuda_times_with_events_without_syncing(monkeypatch):
    from rlir.profiling import PhaseTimer

    monkeypatch.delenv("RLIR_SYNC_PHASES", raising=False)
    timer = PhaseTimer()
    x = torch.randn(2048, 2048, device="cuda")
    with timer.phase("matmul"):
        for _ in range(10):
            x = x @ x.T / 2048
    assert timer._events and timer.breakdown()["matmul"] > 0 and not timer._events


@pytest.mark.gpu
@pytest.mark.parametrize("config", list(VARIANTS))
def test_cuda_step_synchronises_a_few_times_flat_in_the_settings(config, capsys):
    """On a GPU, torch.cuda's sync debug mode reports every synchronising call (host reads and blocking
    host-to-device copies alike): one step's count must not change with micro-batches, frames, denoising steps
    or epochs."""
    import warnings

    counts = {}
    for variant in VARIANTS[config]:
        variant = dict(variant)
        trainer = tiny_trainer(config, variant.pop("micro_batch_size"), variant.pop("n_frames"), "cuda", **variant)
        trainer.step()
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                trainer.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
        counts[str(variant)] = len(syncs)
        with capsys.disabled():
            print(f"\n{config} {variant}: {len(syncs)} synchronising calls", *syncs[:12], sep="\n  ")
    assert len(set(counts.values())) == 1, counts
