"""The loop every `rlir pretrain` target trains through (rlir.pretrain.loop): its contract on a toy target, and the
four targets going through it."""
import json
import math

import pytest
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from rlir.pretrain import diffusion_world_model, idm, loop, tokenizer, world_model
from rlir.pretrain.loop import Target, pretrain


class Weights(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, features: int = 3):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(features))


class FitOnes(Target):
    """Fits the weights to ones by clipped SGD, keeps a copy of them to save, and records what the loop asks."""

    grad_clip = 0.5
    throughput = ("items_per_second", 10)

    def __init__(self, fail_in_report: bool = False):
        self.model, self.copy = Weights(), Weights()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1.0)
        self.fail_in_report = fail_in_report
        self.calls = []

    def learning_rate(self, step):
        return 0.1 * step

    def loss(self):
        self.calls.append(("loss", self.model.training, self.optimizer.param_groups[0]["lr"]))
        loss = ((self.model.weight - 1) ** 2).sum()
        return loss, lambda: {"distance": math.sqrt(loss.item())}

    def after_step(self, step):
        self.calls.append(("after_step", step))
        self.copy.weight.data.copy_(self.model.weight.data + 0.5)

    def validate(self):
        self.calls.append(("validate", self.model.training))
        return {"heldout": 0.25}

    def weights(self):
        return self.copy

    def report(self, staging, saved, trained):
        if self.fail_in_report:
            raise RuntimeError("evaluation failed")
        (staging / "extra.txt").write_text("written by the target")
        return {"saved": saved.weight.tolist(), "saved_dtype": str(saved.weight.dtype),
                "final_loss": trained.final_loss, "seconds": trained.seconds}


def _pretrain(target, out, **overrides):
    settings = dict(overwrite=False, steps=4, log_every=1, eval_every=2, dtype="bf16", description="toy",
                    progress=False)
    return pretrain(target, out, **{**settings, **overrides})


def test_the_loop_steps_logs_validates_and_saves_as_the_target_asks(tmp_path):
    target = FitOnes()
    metrics = _pretrain(target, tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors",
                                                     "extra.txt", "metrics.json", "metrics.jsonl"]
    assert json.loads((out / "metrics.json").read_text()) == metrics

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # Every log_every steps; held-out lines every eval_every steps before the last.
    assert [(line["step"], "heldout" in line) for line in lines] == [(1, False), (2, False), (2, True), (3, False),
                                                                     (4, False)]
    assert list(lines[0]) == ["step", "loss", "distance", "grad_norm", "lr", "seconds", "items_per_second"]
    for line in lines[:2] + lines[3:]:
        assert line["lr"] == pytest.approx(0.1 * line["step"])  # the rate the logged step used
        assert line["items_per_second"] == pytest.approx(line["step"] * 10 / line["seconds"])
        assert line["distance"] == pytest.approx(math.sqrt(line["loss"]))

    # Step 1 at lr 0.1 clips the gradient (-2, -2, -2) to norm 0.5; step 2 sees its result.
    after_one = 0.1 * 0.5 / math.sqrt(3)
    assert lines[1]["loss"] == pytest.approx(3 * (1 - after_one) ** 2, rel=1e-5)
    assert lines[1]["grad_norm"] == pytest.approx(2 * math.sqrt(3) * (1 - after_one), rel=1e-5)  # before clipping

    losses = [call for call in target.calls if call[0] == "loss"]
    assert [lr for _, _, lr in losses] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert all(training for _, training, _ in losses)
    assert [call for call in target.calls if call[0] == "validate"] == [("validate", False)]
    assert [call[1] for call in target.calls if call[0] == "after_step"] == [1, 2, 3, 4]

    # What is saved is the target's weights(), rounded to dtype, handed back in fp32.
    expected = (target.model.weight.detach() + 0.5).bfloat16().float()
    assert metrics["saved"] == expected.tolist() and metrics["saved_dtype"] == "torch.float32"
    assert metrics["final_loss"] == lines[-1]["loss"] and metrics["seconds"] > 0


def test_the_last_step_is_logged_nothing_validated_without_eval_every_and_no_grad_norm_without_clip(tmp_path):
    target = FitOnes()
    target.grad_clip = None
    _pretrain(target, tmp_path / "out", steps=5, eval_every=0, log_every=10)
    lines = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [5] and "grad_norm" not in lines[0]
    assert not [call for call in target.calls if call[0] == "validate"]


def test_a_failed_run_leaves_the_previous_output_untouched(tmp_path):
    out = tmp_path / "out"
    _pretrain(FitOnes(), out)
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(RuntimeError, match="evaluation failed"):
        _pretrain(FitOnes(fail_in_report=True), out, overwrite=True, steps=3)
    assert (out / "metrics.jsonl").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging directory left behind


def test_every_target_trains_through_the_loop(tiny_recording, tmp_path, monkeypatch):
    descriptions = []

    class Recorded(loop.tqdm):
        def __init__(self, *args, desc, **kwargs):
            descriptions.append(desc)
            super().__init__(*args, desc=desc, **kwargs)

    monkeypatch.setattr(loop, "tqdm", Recorded)
    tiny = dict(steps=1, quiet=True, threads=1)
    tokenizer.train(tiny_recording, tmp_path / "tokenizer", batch=2, codebook_size=8, **tiny)
    idm.train(tiny_recording, tmp_path / "idm", batch=1, window=4, depth=1, heads=1, channels=[4], width=8, **tiny)
    shape = dict(layers=1, d_model=16, heads=2, max_frames=4, clip_frames=3, eval_frames=2, eval_prompts=1,
                 batch=1, **tiny)
    world_model.train(tiny_recording, tmp_path / "tokenizer", tmp_path / "ar", kv_heads=1, **shape)
    diffusion_world_model.train(tiny_recording, tmp_path / "dit", tmp_path / "tokenizer", sample_steps=1, **shape)
    assert descriptions == ["pretrain tokenizer", "pretrain idm (reward)", "pretrain world-model",
                            "pretrain world-model (diffusion)"]
