"""Kill tests for rlir/pretrain/loop.py (docs/mutation.md): the progress bar the loop shows, its clock, the
metrics.json file as written, and checkpoint_summary's entry."""
import json

import pytest
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from rlir.pretrain import loop
from rlir.pretrain.loop import Target, checkpoint_summary, pretrain


class Weights(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, features: int = 3):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(features))


class Fit(Target):
    progress_fields = {"loss": ("loss", ".3f"), "heldout": ("val", ".1f")}

    def __init__(self):
        self.model = Weights()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.trained = None

    def learning_rate(self, step):
        return 0.1

    def loss(self):
        return ((self.model.weight - 1) ** 2).sum(), dict

    def validate(self):
        return {"heldout": 0.25}

    def report(self, staging, saved, trained):
        self.trained = trained
        return {"name": "é", "seconds": trained.seconds, "summary": checkpoint_summary(saved, staging, "fp32")}


class Bar:
    """tqdm recorded: its arguments, updates and every postfix shown."""

    made = []

    def __init__(self, **kwargs):
        self.kwargs, self.updates, self.postfixes = kwargs, 0, []
        Bar.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self):
        self.updates += 1

    def set_postfix(self, shown):
        self.postfixes.append(dict(shown))


@pytest.fixture
def bar(monkeypatch):
    Bar.made = []
    monkeypatch.setattr(loop, "tqdm", Bar)
    return Bar


@pytest.fixture
def clock(monkeypatch):
    """time.perf_counter reading 100, 101, 102, ... in the loop."""
    ticks = iter(range(100, 1000))
    monkeypatch.setattr(loop.time, "perf_counter", lambda: float(next(ticks)))


@pytest.mark.parametrize("progress", [True, False])
def test_the_progress_bar_counts_steps_and_shows_the_fields(tmp_path, bar, progress):
    pretrain(Fit(), tmp_path / "out", overwrite=False, steps=3, log_every=1, eval_every=2, dtype="fp32",
             description="toy", progress=progress)
    (made,) = bar.made
    assert made.kwargs == {"total": 3, "desc": "toy", "unit": "step", "disable": not progress}
    assert made.updates == 3
    losses = [f"{3 * 0.8 ** (2 * k):.3f}" for k in range(3)]  # each step moves (w - 1) by a factor 0.8
    assert made.postfixes == [{"loss": losses[0]}, {"loss": losses[1]}, {"loss": losses[1], "val": "0.2"},
                              {"loss": losses[2], "val": "0.2"}]


def test_the_clock_and_metrics_json(tmp_path, clock):
    target = Fit()
    metrics = pretrain(target, tmp_path / "out", overwrite=False, steps=2, log_every=1, eval_every=0,
                       dtype="fp32", description="toy", progress=False)
    lines = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [line["seconds"] for line in lines] == [1.0, 2.0]  # started at 100, logged at 101 and 102
    assert target.trained.seconds == 3.0 and target.trained.finished_at == 103.0
    assert metrics["seconds"] == 3.0
    text = (tmp_path / "out" / "metrics.json").read_bytes().decode("utf-8")
    assert text == json.dumps(metrics, indent=1) + "\n"


def test_checkpoint_summary(tmp_path):
    model = Weights(features=5)
    model.save_pretrained(tmp_path)
    (tmp_path / "other.bin").write_bytes(b"x" * 1000)  # not the weights: not counted
    size = (tmp_path / "diffusion_pytorch_model.safetensors").stat().st_size
    assert checkpoint_summary(model, tmp_path, "bf16") == {"parameters": 5, "checkpoint_bytes": size, "dtype": "bf16",
                                                           "config": {"features": 5}}
