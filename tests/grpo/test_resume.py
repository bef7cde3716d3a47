"""Exact resume: 4 steps in one go == 2 steps, checkpoint, a fresh process-like rebuild, resume, 2 steps."""
import torch

from rlir.grpo import GRPOTrainer, config_from_dict
from rlir.grpo.logging import read_metrics
from rlir.grpo.metrics import MACHINE_METRIC_PREFIXES


def _optimisation_metrics(records):
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith(MACHINE_METRIC_PREFIXES)} for r in records]


def test_resume_is_exact(tiny_dict, tmp_path):
    # A dense reward (log-likelihood) so every step really moves the weights, with the KL term, a cosine
    # schedule, two inner epochs and shuffled minibatches: every stream a resume has to restore.
    tiny_dict["reward"]["mode"] = "loglik"
    tiny_dict["train"].update(steps=4, checkpoint_interval=2, eval_interval=2, keep_last=5)
    tiny_dict["data"]["synthetic_clips"] = 5  # prompt batches span sampler epochs

    full = GRPOTrainer.from_config(config_from_dict(tiny_dict), out_dir=tmp_path / "full")
    full.train()
    full.close()

    first = GRPOTrainer.from_config(config_from_dict(tiny_dict), out_dir=tmp_path / "split")
    first.train(steps=2)
    first.close()
    # Something that would happen in a killed run after the checkpoint, and must not leak into the resumed one.
    torch.manual_seed(12345)
    resumed = GRPOTrainer.from_config(config_from_dict(tiny_dict), out_dir=tmp_path / "split", resume=True)
    assert resumed.step_count == 2
    resumed.train()
    resumed.close()

    a = _optimisation_metrics(read_metrics(tmp_path / "full" / "metrics.jsonl"))
    b = _optimisation_metrics(read_metrics(tmp_path / "split" / "metrics.jsonl"))
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2, 3, 4]
    for m in a[1:]:
        assert m["adv/abs_max"] > 0 and m["optim/grad_norm"] > 0  # every step has a learning signal
    assert a[3]["loss/loss"] != 0.0
    assert a == b  # exactly: steps 3-4 included
    for (k, v), (k2, v2) in zip(full.policy.state_dict().items(), resumed.policy.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
