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


def moving(model, seed: int = 0):
    """``model`` with its adaLN-Zero modulations and output projection drawn at random (seeded), in place: a freshly
    built DiT's velocity is exactly 0, on which a flipped flow-matching target or a swapped interpolation scores
    the same as the right one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modulation" in name or name.startswith("patch_out"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


def tiny_run(**overrides):
    import yaml

    data = yaml.safe_load(TINY_DIFFUSION.read_text())
    items = [f"{k}={v}" for k, v in overrides.items()]
    cfg = config_from_dict(data, items)
    return cfg, build_run(cfg, torch.device("cpu"))


@pytest.mark.parametrize("stochastic", ["all", "window"])
def test_rollout_slots_and_recomputed_logprobs(stochastic):
    cfg, run = tiny_run(**{"rollout.sde.stochastic": stochastic, "rollout.sde.num_steps": 4,
                           "rollout.sde.window": "[1,2]"})
    moving(run.policy.model)
    prompts = run.prompts.next()
    rollout = run.policy.rollout(prompts, 4, generator=torch.Generator().manual_seed(0))
    n, ks = cfg.rollout.n_frames, {"all": 4, "window": 2}[stochastic]
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
    # (reward.mode loglik: under the exact reward the tiny random IDM gives every group equal rewards)
    args = ["train", "--config", str(TINY_DIFFUSION), "--out", str(out), "log.tensorboard=false",
            "advantage.credit=frame", "reward.mode=loglik"]
    assert main(args) == 0
    assert "step 1/1 | reward" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1]
    assert records[1]["adv/abs_max"] > 0 and records[1]["optim/grad_norm"] > 0
    assert records[1]["loss/first_update_logratio_max"] < 1e-2  # recorded = teacher-forced: the first ratio is 1
    # 4 updates a step: the later ones are off-policy, and the ratio of the summed log-probs leaves the clip range
    assert records[1]["loss/clip_frac"] > 0


def kl_after_a_perturbation(policy, rollout, idx):
    """Move every trainable weight a little off the reference; the closed-form KL then, whose gradient must
    reach the weights."""
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.01 * torch.randn_like(p))
    _, kl = policy.logprobs_and_kl(rollout, idx)
    kl.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.trainable_parameters())
    return kl


def test_closed_form_kl_is_the_step_means_kl_to_the_reference():
    cfg, run = tiny_run(**{"loss.beta": 0.1, "loss.kl": "closed_form", "rollout.sde.num_steps": 4})
    policy = run.policy
    rollout = policy.rollout(run.prompts.next(), 2, generator=torch.Generator().manual_seed(2))
    idx = torch.arange(len(rollout))
    logp, kl = policy.logprobs_and_kl(rollout, idx)
    torch.testing.assert_close(logp, rollout.old_logp, atol=1e-4, rtol=0)
    assert kl.shape == logp.shape and kl.abs().max() < 1e-8  # the reference is the initial model
    kl = kl_after_a_perturbation(policy, rollout, idx)
    # The same KL by hand: Gaussians with one shared std, means from a rescore under each model.
    from rlir.models.flow_sampling import transition_logprobs

    sample = rollout.sample
    with torch.no_grad():
        cur = transition_logprobs(policy.model, sample, idx)
        ref = transition_logprobs(policy.reference_model(), sample, idx)
    d = (cur.means - ref.means).double().flatten(3)
    expected = (d.pow(2).sum(-1) / d.shape[-1] / (2 * cur.stds.double() ** 2)).reshape(len(idx), -1)
    assert expected.min() > 0
    torch.testing.assert_close(kl.detach().double(), expected, rtol=1e-4, atol=1e-10)


def test_closed_form_kl_trains_and_is_logged(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--config", str(TINY_DIFFUSION), "--out", str(out), "log.tensorboard=false",
            "log.stdout=false", "loss.beta=0.5", "loss.kl=closed_form", "train.steps=2",
            "train.grad_accumulation=1", "reward.mode=loglik"]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "time/logprob_ref" not in records[1]  # no separate reference pass: it runs inside logprob
    assert records[1]["adv/abs_max"] > 0 and records[1]["optim/grad_norm"] > 0
    assert all(r["loss/kl"] >= 0 and r["loss/kl"] == r["loss/kl"] for r in records[1:])


def test_closed_form_kl_needs_a_policy_that_has_it():
    import yaml

    from rlir.grpo.trainer import GRPOTrainer

    ar = yaml.safe_load((REPO / "configs" / "tiny_ar.yaml").read_text())
    with pytest.raises(ConfigError, match="loss.kl"):  # caught with the config, before any work
        config_from_dict(ar, ["loss.beta=0.1", "loss.kl=closed_form"])
    cfg = config_from_dict(ar, ["loss.beta=0.1"])
    run = build_run(cfg, torch.device("cpu"))
    cfg = cfg.model_copy(update={"loss": cfg.loss.model_copy(update={"kl": "closed_form"})})  # unvalidated
    with pytest.raises(ConfigError, match="loss.kl"):  # a user's policy without logprobs_and_kl
        GRPOTrainer(cfg, run.policy, run.idm, run.prompts)


def test_optim_trainable_freezes_every_other_parameter(tmp_path):
    from rlir.grpo.trainer import GRPOTrainer

    # (patch_out: a random adaLN-Zero DiT starts with a zero output layer, so nothing before it has a gradient)
    # reward loglik: a continuous reward, so the group advantages are not all zero
    cfg, run = tiny_run(**{"optim.trainable": "[action_embeddings, patch_out]", "train.steps": 1,
                           "reward.mode": "loglik", "log.stdout": "false", "log.tensorboard": "false"})
    before = {k: v.clone() for k, v in run.policy.model.state_dict().items()}
    trainable = {n for n, p in run.policy.model.named_parameters() if p.requires_grad}
    assert trainable == {"action_embeddings.0.weight", "patch_out.weight", "patch_out.bias"}
    m, = GRPOTrainer(cfg, run.policy, run.idm, run.prompts, out_dir=tmp_path).train()
    assert m["adv/abs_max"] > 0 and m["optim/grad_norm"] > 0
    after = run.policy.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= trainable


@pytest.mark.parametrize("pattern, message", [("no_such_layer", "matches none"), ("(", "not a regular expression")])
def test_optim_trainable_rejects_bad_patterns(pattern, message):
    with pytest.raises(ConfigError, match=r"optim.trainable\[0\].*" + message):
        tiny_run(**{"optim.trainable": f"[{pattern!r}]"})
