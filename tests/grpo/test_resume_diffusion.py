"""Exact resume of the diffusion world model's GRPO run, as tests/grpo/test_resume.py checks for the AR one:
4 steps in one go == 2 steps, checkpoint, a fresh rebuild, resume, 2 steps, bit for bit on CPU."""
import pytest
import torch
import yaml

from rlir.grpo import GRPOTrainer, config_from_dict
from rlir.grpo.logging import read_metrics

from .conftest import REPO
from .test_resume import _optimisation_metrics


@pytest.mark.parametrize("kl", ["k3", "closed_form"])
def test_diffusion_resume_is_exact(tmp_path, kl):
    data = yaml.safe_load((REPO / "configs" / "tiny_diffusion.yaml").read_text())
    data["log"] = {"tensorboard": False, "stdout": False, "jsonl": True}
    # A dense reward so every step moves the weights; the KL term; a window of SDE steps, the shipped kind; a
    # cosine schedule, two inner epochs and shuffled minibatches; prompt batches that span sampler epochs: every
    # stream a resume has to restore.
    data["reward"]["mode"] = "loglik"
    data["loss"].update(beta=0.1, kl=kl)
    data["rollout"]["sde"].update(num_steps=4, stochastic="window", window=[1, 2])
    data["train"].update(steps=4, checkpoint_interval=2, eval_interval=2, keep_last=5)
    data["data"]["synthetic_clips"] = 5

    full = GRPOTrainer.from_config(config_from_dict(data), out_dir=tmp_path / "full")
    full.train()
    full.close()

    first = GRPOTrainer.from_config(config_from_dict(data), out_dir=tmp_path / "split")
    first.train(steps=2)
    first.close()
    torch.manual_seed(12345)  # what a killed run might do after its checkpoint must not leak into the resumed one
    resumed = GRPOTrainer.from_config(config_from_dict(data), out_dir=tmp_path / "split", resume=True)
    assert resumed.step_count == 2
    resumed.train()
    resumed.close()

    a = _optimisation_metrics(read_metrics(tmp_path / "full" / "metrics.jsonl"))
    b = _optimisation_metrics(read_metrics(tmp_path / "split" / "metrics.jsonl"))
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2, 3, 4]
    for m in a[1:]:
        assert m["adv/abs_max"] > 0 and m["optim/grad_norm"] > 0  # every step has a learning signal
    assert a[3]["loss/kl"] > 0 and "eval/reward_mean" in a[4]
    assert a == b  # exactly: steps 3-4 included
    for (k, v), (k2, v2) in zip(full.policy.state_dict().items(), resumed.policy.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert any(not torch.equal(v, v0) for v, v0 in zip(full.policy.state_dict().values(),
                                                        first.policy.state_dict().values()))
