"""Tests that fail on the bugs issue 15 planted one at a time (each passed every earlier test):

1. ``ModelPolicy.reference_logprobs`` scoring with the live model instead of the frozen initial one (the KL is
   then identically 0 and ``loss.beta`` does nothing);
2. ``DiffusionPolicy`` rescoring with a flipped context and zeroed actions (a random adaLN-Zero DiT has
   velocity exactly 0, so rescoring equalled recording whatever the inputs: these tests perturb its weights);
4. an inverted cosine learning-rate schedule (lr 0 at the first update), and weight decay on every parameter;
5. resume without truncating the log lines written after the last checkpoint.
(3, the evaluation's IDM scored against shifted actions, is in tests/eval/test_metrics_handbuilt.py.)

Every test that runs a GRPO step first asserts that it has a learning signal (non-zero advantages and
gradient), so that what it checks afterwards cannot hold trivially.
"""
import copy
import dataclasses
import math

import pytest
import torch
import torch.nn as nn

from rlir.grpo import GRPOTrainer, config_from_dict, list_checkpoints
from rlir.grpo.logging import read_metrics
from rlir.grpo.trainer import lr_lambda
from rlir.models.flow_sampling import transition_logprobs
from rlir.optim import adamw_decaying_matrices
from rlir.policies import ARPolicy, SDEStepPolicy

from .conftest import ToyTokenizer, toy_config, toy_model
from .test_diffusion_policy import tiny_run
from .test_resume import _optimisation_metrics


def assert_learning_signal(m):
    assert m["adv/abs_max"] > 0, "every group has equal rewards: this step cannot move anything"
    assert m["optim/grad_norm"] > 0, "zero gradient: this step cannot move anything"


def one_update_step(trainer):
    """trainer.step() (configured for one update per step), returning (metrics, its rollout, the model as it
    was before the update)."""
    before = copy.deepcopy(trainer.policy.model)
    rollouts = []
    real_rollout = trainer.policy.rollout

    def recording_rollout(*args, **kwargs):
        rollouts.append(real_rollout(*args, **kwargs))
        return rollouts[-1]

    trainer.policy.rollout = recording_rollout
    try:
        m = trainer.step()
    finally:
        del trainer.policy.rollout
    assert m["optim/updates"] == 1.0 and len(rollouts) == 1
    return m, rollouts[0], before


def perturb_(model: nn.Module, scale: float = 0.1, seed: int = 0) -> nn.Module:
    """Every weight + scale * N(0, 1): adaLN-Zero's zero output layer (velocity exactly 0) is gone."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


# ---- 1. the reference model is the initial one, not the live one ------------------------------------

def test_reference_logprobs_stay_at_the_initial_weights_after_updates(toy_trainer):
    trainer = toy_trainer(loss={"beta": 0.1}, train={"steps": 3})
    history = trainer.train()
    assert_learning_signal(history[0])
    policy = trainer.policy
    rollout = policy.rollout(trainer.prompts.next(), 8, generator=torch.Generator().manual_seed(3))
    idx = torch.arange(len(rollout))
    initial = ARPolicy(toy_model(0), ToyTokenizer(), temperature=policy.temperature)  # built apart, never trained
    with torch.no_grad():
        current, expected = policy.logprobs(rollout, idx), initial.logprobs(rollout, idx)
    assert (current - expected).abs().max() > 1e-2  # the updates moved the policy away from the reference
    torch.testing.assert_close(policy.reference_logprobs(rollout, idx), expected, rtol=0, atol=1e-6)
    # ... so the KL term is live from the second update on (the first one is scored at the initial weights).
    assert all(m["loss/kl"] > 1e-6 for m in history[1:]), [m["loss/kl"] for m in history]


def test_logged_kl_is_k3_to_a_separately_built_initial_model(toy_trainer):
    # One update per step (32 videos, one minibatch of 32), so the logged KL is that of the weights before it.
    trainer = toy_trainer(loss={"beta": 0.1, "old_logprobs": "recompute"},
                          train={"steps": 4, "micro_batch_size": 8, "grad_accumulation": 4})
    for m in trainer.train(steps=3):
        assert_learning_signal(m)
    m, rollout, before = one_update_step(trainer)
    assert_learning_signal(m)
    idx = torch.arange(len(rollout))
    with torch.no_grad():
        logp = ARPolicy(before, ToyTokenizer(), temperature=trainer.policy.temperature).logprobs(rollout, idx)
        ref = ARPolicy(toy_model(0), ToyTokenizer(), temperature=trainer.policy.temperature).logprobs(rollout, idx)
    d = ref - logp
    k3 = (torch.exp(d) - d - 1)[rollout.mask].mean().item()
    assert k3 > 1e-5
    assert m["loss/kl"] == pytest.approx(k3, rel=1e-4)


@pytest.mark.parametrize("kl", ["k3", "closed_form"])
def test_diffusion_kl_after_updates_is_to_the_initial_model(kl):
    cfg, run = tiny_run(**{"loss.beta": 0.1, "loss.kl": kl, "reward.mode": "loglik", "train.steps": 4,
                           "train.inner_epochs": 1, "train.micro_batch_size": 8, "train.grad_accumulation": 1,
                           "optim.lr": 1e-2, "train.eval_interval": 0})
    initial = copy.deepcopy(run.policy.model)  # the weights before any update, as a separate model
    trainer = GRPOTrainer(cfg, run.policy, run.idm, run.prompts)
    for m in trainer.train(steps=3):
        assert_learning_signal(m)
    m, rollout, before = one_update_step(trainer)
    assert_learning_signal(m)
    idx = torch.arange(len(rollout))
    sample = rollout.sample
    elements = sample.frames[0, 0].numel()  # a slot's log-prob is the sum over the frame's elements
    with torch.no_grad():
        cur, ref = transition_logprobs(before, sample, idx), transition_logprobs(initial, sample, idx)
        if kl == "k3":
            torch.testing.assert_close(trainer.policy.reference_logprobs(rollout, idx),
                                       elements * ref.log_probs.reshape(len(idx), -1), rtol=0, atol=1e-5 * elements)
    if kl == "k3":
        d = elements * (ref.log_probs - cur.log_probs).double()
        expected = (torch.exp(d) - d - 1).mean().item()
    else:
        sq = (cur.means - ref.means).double().pow(2).flatten(3).mean(-1)
        expected = (sq / (2 * cur.stds.double() ** 2)).mean().item()
    assert expected > 1e-7
    assert m["loss/kl"] == pytest.approx(expected, rel=1e-3)


# ---- 2. the DiT policy on a model whose velocity is not zero ----------------------------------------

def perturbed_diffusion_run(**overrides):
    cfg, run = tiny_run(**overrides)
    perturb_(run.policy.model)
    return cfg, run


@pytest.mark.parametrize("stochastic", ["all", "window"])
def test_dit_rescoring_equals_recording_and_reads_context_and_actions(stochastic):
    cfg, run = perturbed_diffusion_run(**{"rollout.sde.stochastic": stochastic, "rollout.sde.num_steps": 4,
                                          "rollout.sde.window": "[1,2]"})
    policy = run.policy
    rollout = policy.rollout(run.prompts.next(), 4, generator=torch.Generator().manual_seed(0))
    idx = torch.arange(len(rollout))
    with torch.no_grad():
        logp = policy.logprobs(rollout, idx)
    torch.testing.assert_close(logp, rollout.old_logp, atol=1e-4, rtol=0)
    # The equality above is not trivial: the same trajectories rescored under other actions, or another
    # context, get other log-probs.
    s = rollout.sample
    heads = policy.model.head_sizes
    other_actions = (s.actions + 1) % torch.tensor(heads)
    flipped_context = s.context.flip(-1)
    for key, value in (("actions", other_actions), ("actions", torch.zeros_like(s.actions)),
                       ("context", flipped_context)):
        changed = copy.copy(rollout)
        changed.sample = dataclasses.replace(s, **{key: value})
        with torch.no_grad():
            assert (policy.logprobs(changed, idx) - logp).abs().max() > 1e-3, key


def test_dit_reference_of_a_perturbed_model_and_the_trainer_on_it():
    cfg, run = perturbed_diffusion_run(**{"loss.beta": 0.1, "reward.mode": "loglik", "train.eval_interval": 0,
                                          "loss.old_logprobs": "rollout"})
    model = run.policy.model
    initial = copy.deepcopy(model)
    policy = SDEStepPolicy(model, run.policy.tokenizer, num_steps=cfg.rollout.sde.num_steps,
                             noise_level=cfg.rollout.sde.noise_level, reference_factory=lambda: copy.deepcopy(initial))
    rollout = policy.rollout(run.prompts.next(), 4, generator=torch.Generator().manual_seed(1))
    idx = torch.arange(len(rollout))
    torch.testing.assert_close(policy.reference_logprobs(rollout, idx), rollout.old_logp, atol=1e-4, rtol=0)
    trainer = GRPOTrainer(cfg, policy, run.idm, run.prompts)
    m = trainer.step()
    assert_learning_signal(m)
    assert m["loss/first_update_logratio_max"] < 1e-4  # the trainer rescored what the rollout recorded


# ---- 4. the learning-rate schedule and the weight-decay groups ---------------------------------------

def test_lr_schedule_values_warmup_cosine_floor():
    # 32 videos a step in minibatches of 16: 2 updates a step; 6 steps = 12 updates, the first 4 warm up.
    cfg = toy_config(optim={"schedule": "cosine", "warmup_steps": 2, "min_lr_ratio": 0.1}, train={"steps": 6})
    assert cfg.updates_per_step == 2
    factor = lr_lambda(cfg)
    got = [factor(u) for u in range(12)]
    warmup = [0.25, 0.5, 0.75, 1.0]
    cosine = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 7)) for k in range(8)]  # 8 updates, 7 intervals
    assert got == pytest.approx(warmup + cosine, abs=1e-12)
    assert got[4] == pytest.approx(1.0) and got[-1] == pytest.approx(0.1)  # from the peak down to the floor
    assert all(a >= b for a, b in zip(got[3:], got[4:]))

    no_warmup = lr_lambda(toy_config(optim={"schedule": "cosine"}, train={"steps": 6}))
    assert no_warmup(0) == 1.0 and no_warmup(11) == pytest.approx(0.0, abs=1e-12)
    assert no_warmup(5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 11)))
    constant = lr_lambda(toy_config(optim={"schedule": "constant", "warmup_steps": 1}, train={"steps": 6}))
    assert [constant(u) for u in range(4)] == [0.5, 1.0, 1.0, 1.0]


def test_trainer_updates_follow_the_schedule(toy_trainer):
    trainer = toy_trainer(optim={"lr": 1e-2, "schedule": "cosine", "min_lr_ratio": 0.2}, train={"steps": 3})
    lrs = []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"]))
    history = trainer.train()
    assert_learning_signal(history[0])
    expected = [1e-2 * (0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * u / 5))) for u in range(6)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs[0] == 1e-2  # the first update runs at the configured lr, not at 0
    assert [m["optim/lr"] for m in history] == pytest.approx(expected[::2], rel=1e-9)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(5, 4)
        self.linear = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.gain = nn.Parameter(torch.ones(4))


def test_weight_decay_only_on_matrices():
    torch.manual_seed(0)
    net = _Net()
    optimizer = adamw_decaying_matrices(net.parameters(), lr=0.1, weight_decay=0.5, betas=(0.9, 0.999))
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert len(decay) == len(list(net.parameters()))
    for name, p in net.named_parameters():
        assert decay[id(p)] == (0.5 if p.ndim >= 2 else 0.0), name
    # And what it does: with zero gradients one AdamW step only decays, so the matrices shrink by
    # 1 - lr * weight_decay and norms, biases and gains do not move.
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in net.named_parameters():
        expected = before[name] * (1 - 0.1 * 0.5) if p.ndim >= 2 else before[name]
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7, msg=name)


def test_trainer_decays_only_the_world_models_matrices(toy_trainer):
    trainer = toy_trainer(optim={"weight_decay": 0.1})
    decay = {id(p): group["weight_decay"] for group in trainer.optimizer.param_groups for p in group["params"]}
    params = dict(trainer.policy.model.named_parameters())
    assert set(decay) == {id(p) for p in params.values()}
    assert {n for n, p in params.items() if decay[id(p)] == 0.1} == {n for n, p in params.items() if p.ndim >= 2}
    assert any(p.ndim < 2 for p in params.values()) and any(p.ndim >= 2 for p in params.values())


# ---- 5. a run killed between a log line and a checkpoint --------------------------------------------

def tensorboard_steps(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def test_resume_after_a_kill_between_a_log_line_and_a_checkpoint(tiny_dict, tmp_path):
    tiny_dict["reward"]["mode"] = "loglik"
    tiny_dict["train"].update(steps=4, checkpoint_interval=2, eval_interval=2, keep_last=5)
    tiny_dict["log"]["tensorboard"] = True

    full = GRPOTrainer.from_config(config_from_dict(tiny_dict), out_dir=tmp_path / "full")
    full.train()
    full.close()

    killed = GRPOTrainer.from_config(config_from_dict(tiny_dict), out_dir=tmp_path / "killed")
    real_step = killed.step

    def step_then_die():
        if killed.step_count == 3:  # step 3 is logged; its checkpoint would come only with step 4
            raise KeyboardInterrupt("killed (simulated)")
        return real_step()

    killed.step = step_then_die
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    killed.close()
    jsonl = tmp_path / "killed" / "metrics.jsonl"
    assert [r["step"] for r in read_metrics(jsonl)] == [0, 1, 2, 3]
    assert [s for s, _ in list_checkpoints(tmp_path / "killed" / "checkpoints")] == [2]

    resumed = GRPOTrainer.from_config(config_from_dict(tiny_dict), out_dir=tmp_path / "killed", resume=True)
    assert resumed.step_count == 2
    resumed.train()
    resumed.close()
    a = _optimisation_metrics(read_metrics(tmp_path / "full" / "metrics.jsonl"))
    b = _optimisation_metrics(read_metrics(jsonl))
    for m in a[1:]:
        assert_learning_signal(m)
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4]  # step 3 once: the killed run's line was dropped
    assert a == b  # and the one kept is the resumed run's, equal to the uninterrupted run's
    assert tensorboard_steps(tmp_path / "killed", "reward/mean") == [1, 2, 3, 4]
    assert tensorboard_steps(tmp_path / "killed", "reward/mean") == tensorboard_steps(tmp_path / "full", "reward/mean")


def test_resume_drops_later_lines_and_a_torn_last_line(tmp_path):
    from rlir.grpo.logging import MetricsLogger

    logger = MetricsLogger(tmp_path, tensorboard=False, stdout=False)
    for step in range(4):
        logger.log(step, {"reward/mean": float(step)})
    logger.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "reward/me')  # the kill cut this line short
    logger = MetricsLogger(tmp_path, tensorboard=False, stdout=False, resume_step=2)
    logger.log(3, {"reward/mean": 30.0})
    logger.close()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["reward/mean"]) for r in records] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 30.0)]
