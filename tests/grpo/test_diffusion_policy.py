"""The diffusion world model in the GRPO loop: DiffusionPolicy (SDE log-prob slots) and the tiny CI config."""
import json

import pytest
import torch

from rlir.cli import main
from rlir.grpo import config_from_dict
from rlir.grpo.builders import build_run
from rlir.grpo.config import ConfigError

from .conftest import REPO

TINY_DIFFUSION = REPO / "configs" / "tiny_diffusion.yaml"


def tiny_run(**overrides):
    import yaml

    data = yaml.safe_load(TINY_DIFFUSION.read_text())
    items = [f"{k}={v}" for k, v in overrides.items()]
    cfg = config_from_dict(data, items)
    return cfg, build_run(cfg, torch.device("cpu"))


@pytest.mark.parametrize("stochastic", ["all", "fraction", "window"])
def test_rollout_slots_and_recomputed_logprobs(stochastic):
    cfg, run = tiny_run(**{"rollout.sde.stochastic": stochastic, "rollout.sde.num_steps": 4,
                           "rollout.sde.fraction": 0.5, "rollout.sde.window": "[1,2]"})
    prompts = run.prompts.next()
    rollout = run.policy.rollout(prompts, 4, generator=torch.Generator().manual_seed(0))
    n, ks = cfg.rollout.n_frames, {"all": 4, "fraction": 2, "window": 2}[stochastic]
    assert rollout.old_logp.shape == (len(prompts) * 4, n * ks) and rollout.mask.all()
    assert torch.equal(rollout.slot_frame, torch.arange(n).repeat_interleave(ks))
    frames = run.policy.decode(rollout)
    assert frames.dtype == torch.uint8 and frames.shape == (len(prompts) * 4, n + 1, 3, 16, 16)
    # The recorded log-probs are those of the current weights: GRPO's first ratio is 1.
    idx = torch.tensor([0, 3, 5])
    torch.testing.assert_close(run.policy.logprobs(rollout, idx), rollout.old_logp[idx], atol=1e-4, rtol=0)


def test_logprobs_are_differentiable_and_reference_is_frozen():
    cfg, run = tiny_run(**{"loss.beta": 0.1})
    rollout = run.policy.rollout(run.prompts.next(), 2, generator=torch.Generator().manual_seed(1))
    idx = torch.arange(len(rollout))
    run.policy.logprobs(rollout, idx).sum().backward()
    grads = [p.grad for p in run.policy.trainable_parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    ref = run.policy.reference_logprobs(rollout, idx)
    torch.testing.assert_close(ref, rollout.old_logp, atol=1e-4, rtol=0)  # initial weights: the same model
    assert not any(p.requires_grad for p in run.policy.reference_model().parameters())


def test_kind_must_match_the_checkpoint():
    with pytest.raises(ConfigError, match="models.kind"):
        config_from_dict({"models": {"kind": "diffusion", "source": "pretrained",
                                     "world_model": str(REPO / "checkpoints/crafter/ar_world_model"),
                                     "tokenizer": str(REPO / "checkpoints/crafter/tokenizer"),
                                     "idm": str(REPO / "checkpoints/crafter/idm")},
                          "data": {"source": "synthetic"}})


def test_random_diffusion_model_rejects_derived_sizes():
    with pytest.raises(ConfigError, match="models.random.world_model.in_channels"):
        config_from_dict({"models": {"kind": "diffusion", "source": "random",
                                     "random": {"world_model": {"in_channels": 4}}},
                          "data": {"source": "synthetic"}})


def test_train_tiny_diffusion_config_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--config", str(TINY_DIFFUSION), "--out", str(out), "log.tensorboard=false",
            "advantage.credit=frame"]
    assert main(args) == 0
    assert "step 1/1 | reward" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1]
    assert records[1]["loss/ratio_mean"] == pytest.approx(1.0, abs=1e-3)
