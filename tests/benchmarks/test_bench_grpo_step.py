"""benchmarks/bench_grpo_step.py: the straightforward GRPO step computes what GRPOTrainer.step computes.

Tiny random models (configs/tiny_ar.yaml), so every test runs in seconds on one CPU thread.
"""
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_grpo_step as bench  # noqa: E402
from rlir.grpo import config_from_dict  # noqa: E402
from rlir.kernels import grpo_loss, idm_advantage  # noqa: E402
from rlir.models import ARWorldModel, generate  # noqa: E402
from rlir.models.idm import InverseDynamicsModel  # noqa: E402
from rlir.profiling import PhaseTimer  # noqa: E402

# What the straightforward step supports, on the tiny config; one minibatch of all 8 videos (2 micro-batches
# of 4), so the step's loss is computed before any update on both sides.
TINY_OVERRIDES = {"loss": {"beta": 0.0}, "train": {"inner_epochs": 1, "micro_batch_size": 4, "grad_accumulation": 2,
                                                   "eval_interval": 0, "checkpoint_interval": 0},
                  "log": {"tensorboard": False, "stdout": False, "jsonl": False}}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def tiny_config():
    data = yaml.safe_load((REPO / "configs" / "tiny_ar.yaml").read_text())
    for section, values in TINY_OVERRIDES.items():
        data[section].update(values)
    return config_from_dict(data)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return ARWorldModel(codebook_size=32, tokens_per_frame=4, action_head_sizes=[5, 3], n_layers=2, d_model=32,
                        n_heads=2, n_kv_heads=1, max_frames=6).eval()


def random_clip(model, batch, frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, model.config.codebook_size, (batch, frames, model.config.tokens_per_frame), generator=g)
    actions = torch.stack([torch.randint(0, n, (batch, frames - 1), generator=g) for n in model.head_sizes], -1)
    return codes, actions


@pytest.mark.parametrize("n_context", [1, 2])
def test_sampler_without_cache_draws_the_cached_samplers_tokens(n_context):
    model = tiny_model()
    codes, actions = random_clip(model, batch=2, frames=5)
    context, context_actions, commanded = codes[:, :n_context], actions[:, :n_context - 1], actions[:, n_context - 1:]
    cached_tokens, cached_logp = generate(model, context, commanded, num_samples=3, temperature=0.9,
                                          context_actions=context_actions if n_context > 1 else None,
                                          generator=torch.Generator().manual_seed(5))
    tokens, logp = bench.sample_without_cache(model, context, commanded, context_actions if n_context > 1 else None,
                                              3, 0.9, torch.Generator().manual_seed(5))
    assert torch.equal(tokens, cached_tokens)
    torch.testing.assert_close(logp, cached_logp, atol=1e-5, rtol=0)


def test_rewards_and_advantages_equal_idm_advantage():
    torch.manual_seed(0)
    idm = InverseDynamicsModel(head_sizes=[5, 3], frame_size=16, window=4, width=16, depth=1, heads=2,
                               channels=[8, 8]).eval()
    frames = torch.randint(0, 256, (8, 4, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        logits = idm(frames)
    predicted = torch.stack([x.argmax(-1) for x in logits], -1)
    # Command the IDM's own prediction on a random subset of frames, so that rewards vary within groups.
    random_actions = torch.stack([torch.randint(0, 5, (8, 3)), torch.randint(0, 3, (8, 3))], -1)
    actions = torch.where(torch.rand(8, 3, 1) < 0.5, predicted, random_actions)
    actions[:4] = predicted[:4]  # ... except one group where every video scores 1 (advantage 0)

    rewards = bench.rewards_one_video_at_a_time(idm, frames, actions)
    advantages = bench.group_advantages(rewards, 4, eps=1e-6)
    ours, our_advantages = idm_advantage(logits, actions, group_size=4)
    torch.testing.assert_close(rewards, ours.reward)
    torch.testing.assert_close(advantages, our_advantages, atol=1e-5, rtol=1e-5)
    assert rewards[4:].std() > 0 and torch.all(advantages[:4] == 0)


def test_logprobs_loss_and_gradients_equal_ours():
    cfg = tiny_config()
    trainer, _ = bench.build_pair(cfg, torch.device("cpu"))
    policy = trainer.policy
    rollout = policy.rollout(trainer.prompts.next(), cfg.rollout.group_size, generator=torch.Generator().manual_seed(0))
    s, n = rollout.sample, len(rollout)
    naive_logp = bench.logprobs_from_full_logits(policy.model, s.context_tokens, s.tokens, s.all_actions,
                                                 policy.temperature)
    torch.testing.assert_close(naive_logp, rollout.old_logp, atol=1e-5, rtol=0)

    # Old log-probs off by up to +-0.5, so that both clip bounds are hit.
    old = rollout.old_logp + (torch.rand(rollout.old_logp.shape, generator=torch.Generator().manual_seed(1)) - 0.5)
    advantages = torch.randn(n, generator=torch.Generator().manual_seed(2))
    params = list(policy.model.parameters())

    ours_logp = policy.logprobs(rollout, torch.arange(n))
    torch.testing.assert_close(ours_logp, naive_logp, atol=1e-5, rtol=0)
    our_loss, _ = grpo_loss(ours_logp, old, advantages, rollout.mask, eps_low=0.2, eps_high=0.28)
    our_grads = torch.autograd.grad(our_loss, params)

    naive_logp = bench.logprobs_from_full_logits(policy.model, s.context_tokens, s.tokens, s.all_actions,
                                                 policy.temperature)
    token_losses = bench.clipped_grpo_token_losses(naive_logp, old, advantages, 0.2, 0.28)
    naive_loss = token_losses.sum() / token_losses.numel()
    naive_grads = torch.autograd.grad(naive_loss, params)

    ratio = torch.exp(naive_logp.detach() - old)
    assert (ratio < 0.8).any() and (ratio > 1.28).any()
    torch.testing.assert_close(naive_loss, our_loss, atol=1e-6, rtol=1e-5)
    for naive_grad, our_grad in zip(naive_grads, our_grads):
        torch.testing.assert_close(naive_grad, our_grad, atol=1e-6, rtol=1e-4)


def test_whole_steps_sample_score_and_lose_alike():
    cfg = tiny_config()
    trainer, naive = bench.build_pair(cfg, torch.device("cpu"))
    # The tiny random IDM predicts one action whatever the frames, so every group would have equal rewards and
    # the step would move nothing. Perturbed, it reads the frames: rewards vary within the groups.
    assert naive.idm is trainer.idm
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainer.idm.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    initial = [p.detach().clone() for p in trainer.policy.model.parameters()]
    ours = trainer.step()
    theirs = naive.step(PhaseTimer())
    # A learning signal first: non-zero advantages and gradient, one update that moved the weights.
    assert ours["adv/abs_max"] > 0 and ours["adv/zero_group_frac"] < 1 and ours["optim/grad_norm"] > 0
    assert ours["optim/updates"] == 1.0
    moved = max((p.detach() - p0).abs().max().item() for p, p0 in zip(trainer.policy.model.parameters(), initial))
    assert moved > 100 * 1e-5  # AdamW's first step moves a weight by about lr = 1e-3, far beyond the tolerance below
    assert theirs["reward/mean"] == pytest.approx(ours["reward/mean"], abs=1e-6)
    assert theirs["loss/loss"] == pytest.approx(ours["loss/loss"], abs=1e-6)  # ~0: ratio 1, advantages mean 0
    # After one AdamW update from the same weights and gradients the models still agree.
    for (name, p_ours), p_naive in zip(trainer.policy.model.named_parameters(), naive.model.parameters()):
        torch.testing.assert_close(p_naive, p_ours, atol=1e-5, rtol=0, msg=name)


def test_main_writes_json_and_report_table(tmp_path):
    overrides = [f"{section}.{key}={value}" for section, values in TINY_OVERRIDES.items() if section != "log"
                 for key, value in values.items()]
    bench.main(["--config", "configs/tiny_ar.yaml", "--prompts", "2", "--group-size", "4", "--frames", "2",
                "--repeats", "1", "--out", str(tmp_path), "--set", *overrides])
    payload = json.loads((tmp_path / "grpo_step_cpu.json").read_text())
    assert payload["shape"]["B"] == 2 and payload["shape"]["frames"] == 2
    assert set(payload["seconds"]) == {"straightforward", "rlir"}
    assert payload["speedup"]["total"] > 0
    import report

    report.main(["--results", str(tmp_path)])
    assert "grpo_step" in (tmp_path / "RESULTS.md").read_text()


# ---- the competent baseline (KV-cached per-sample rollout, one batched IDM call) ---------------------------

@pytest.mark.parametrize("n_context", [1, 2])
@pytest.mark.parametrize("inputs", [{}, {"frame_action_embedding": True, "frame_grid": [2, 2],
                                         "previous_frame_input": True}])
def test_competent_sampler_draws_the_cached_samplers_tokens(n_context, inputs):
    torch.manual_seed(0)
    model = ARWorldModel(codebook_size=32, tokens_per_frame=4, action_head_sizes=[5, 3], n_layers=2, d_model=32,
                         n_heads=2, n_kv_heads=1, max_frames=6, **inputs).eval()
    codes, actions = random_clip(model, batch=2, frames=5)
    context, context_actions, commanded = codes[:, :n_context], actions[:, :n_context - 1], actions[:, n_context - 1:]
    cached_tokens, cached_logp = generate(model, context, commanded, num_samples=3, temperature=0.9,
                                          context_actions=context_actions if n_context > 1 else None,
                                          generator=torch.Generator().manual_seed(5))
    tokens, logp = bench.sample_with_kv_cache(model, context, commanded, context_actions if n_context > 1 else None,
                                              3, 0.9, torch.Generator().manual_seed(5))
    assert torch.equal(tokens, cached_tokens)
    torch.testing.assert_close(logp, cached_logp, atol=1e-5, rtol=0)


def test_competent_step_computes_the_same_step():
    cfg = tiny_config()
    trainer, _ = bench.build_pair(cfg, torch.device("cpu"))
    competent = bench.build_competent(cfg, trainer)
    assert competent.idm is trainer.idm
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # as above: a perturbed IDM reads the frames, so rewards vary within the groups
        for p in trainer.idm.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    initial = [p.detach().clone() for p in trainer.policy.model.parameters()]
    ours = trainer.step()
    theirs = competent.step(PhaseTimer())
    assert ours["adv/abs_max"] > 0 and ours["adv/zero_group_frac"] < 1 and ours["optim/grad_norm"] > 0
    moved = max((p.detach() - p0).abs().max().item() for p, p0 in zip(trainer.policy.model.parameters(), initial))
    assert moved > 100 * 1e-5
    assert theirs["reward/mean"] == pytest.approx(ours["reward/mean"], abs=1e-6)
    assert theirs["loss/loss"] == pytest.approx(ours["loss/loss"], abs=1e-6)
    for (name, p_ours), p_competent in zip(trainer.policy.model.named_parameters(), competent.model.parameters()):
        torch.testing.assert_close(p_competent, p_ours, atol=1e-5, rtol=0, msg=name)


def test_batched_rewards_equal_one_video_at_a_time():
    torch.manual_seed(0)
    idm = InverseDynamicsModel(head_sizes=[5, 3], frame_size=16, window=4, width=16, depth=1, heads=2,
                               channels=[8, 8]).eval()
    frames = torch.randint(0, 256, (6, 4, 3, 16, 16), dtype=torch.uint8)
    actions = torch.stack([torch.randint(0, 5, (6, 3)), torch.randint(0, 3, (6, 3))], -1)
    torch.testing.assert_close(bench.rewards_batched(idm, frames, actions),
                               bench.rewards_one_video_at_a_time(idm, frames, actions))
