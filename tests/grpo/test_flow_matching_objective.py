"""FlowMatchingPolicy, the DiT's flow-matching objective (loss.objective: flow_matching): one slot per generated
frame, the advantage-weighted flow-matching loss as its log-prob, its closed-form KL to the reference."""
import json

import pytest
import torch

from rlir.cli import main
from rlir.grpo.config import ConfigError
from rlir.kernels import grpo_loss
from rlir.policies import FlowMatchingPolicy, SDEStepPolicy
from rlir.policies.diffusion import summed
from rlir.policies.flow_matching import flow_matching_scores

from .test_diffusion_policy import TINY_DIFFUSION, kl_after_a_perturbation, moving, tiny_run

MATCHING = {"loss.objective": "flow_matching", "loss.train_sigmas": "[0.4,0.9]",
            "loss.kl": "closed_form"}  # k3 means nothing for these slots: the config rejects it


def test_slots_are_frames_scored_at_the_drawn_noise_levels():
    cfg, run = tiny_run(**MATCHING)
    moving(run.policy.model)  # a velocity that is not 0, or a flipped target and swapped s, 1 - s pass
    prompts = run.prompts.next()
    rollout = run.policy.rollout(prompts, 3, generator=torch.Generator().manual_seed(0))
    n, rows = cfg.rollout.n_frames, len(prompts) * 3
    assert rollout.old_logp is None  # sampling scores nothing: the trainer does (loss.old_logprobs)
    assert rollout.mask.shape == (rows, n) and rollout.mask.all()
    assert torch.equal(rollout.slot_frame, torch.arange(n))
    sample = rollout.sample
    assert sample.sigma.shape == (rows, n) and 0.4 <= sample.sigma.min() and sample.sigma.max() <= 0.9
    assert sample.sigma.std() > 0 and sample.noise.shape == sample.frames.shape
    # a prompt's 3 samples share their noise levels and noise, frame by frame; prompts do not
    torch.testing.assert_close(sample.sigma, sample.sigma[::3].repeat_interleave(3, 0), atol=0, rtol=0)
    torch.testing.assert_close(sample.noise, sample.noise[::3].repeat_interleave(3, 0), atol=0, rtol=0)
    assert (sample.sigma[0] != sample.sigma[3]).all() and (sample.noise[0] != sample.noise[3]).any()
    # The log-prob by hand: minus half the summed squared error of the velocity against eps - x0 at
    # x_sigma = (1 - sigma) x0 + sigma eps, frame by frame.
    model, flow = run.policy.model, sample.flow
    k = 1
    s = sample.sigma[:, k, None, None, None]
    x0, eps = flow.frames[:, k], sample.noise[:, k]
    clean = torch.cat((flow.context, flow.frames[:, :k]), dim=1)
    actions = torch.cat((flow.context_actions, flow.actions), dim=1)
    with torch.no_grad():
        v = model(((1 - s) * x0 + s * eps)[:, None], sample.sigma[:, k, None], actions, clean=clean,
                  frame_index=[clean.shape[1]])[:, 0]
    assert v.abs().mean() > 0.1
    expected = -0.5 * (v - (eps - x0)).pow(2).flatten(1).sum(1)
    with torch.no_grad():
        logp = run.policy.logprobs(rollout, torch.arange(rows))
    torch.testing.assert_close(logp[:, k], expected, atol=1e-4, rtol=1e-5)


def test_per_sample_noise_draws_each_sample_its_own():
    cfg, run = tiny_run(**MATCHING, **{"rollout.sde.shared_noise": "false"})
    assert cfg.rollout.sde.shared_noise is False and run.policy.shared_noise is False
    rollout = run.policy.rollout(run.prompts.next(), 3, generator=torch.Generator().manual_seed(0))
    sigma, noise = rollout.sample.sigma, rollout.sample.noise
    assert (sigma[0] != sigma[1]).all() and (noise[0] != noise[1]).any()


def test_slot_of_frame_k_depends_on_no_later_frame():
    _, run = tiny_run(**MATCHING)
    rollout = run.policy.rollout(run.prompts.next(), 2, generator=torch.Generator().manual_seed(1))
    before, _ = flow_matching_scores(run.policy.model, rollout.sample)
    rollout.sample.flow.frames[:, 1:] += 1.0  # frames 1.. change: slot 0 keeps its score
    after, _ = flow_matching_scores(run.policy.model, rollout.sample)
    torch.testing.assert_close(after[:, :1], before[:, :1], atol=1e-6, rtol=0)
    assert (after[:, 1:] - before[:, 1:]).abs().min() > 1e-4


def test_kl_is_half_the_velocity_mse_to_the_reference():
    _, run = tiny_run(**{**MATCHING, "loss.beta": 0.1})
    policy = run.policy
    rollout = policy.rollout(run.prompts.next(), 2, generator=torch.Generator().manual_seed(2))
    idx = torch.arange(len(rollout))
    logp, kl = policy.logprobs_and_kl(rollout, idx)
    assert kl.shape == logp.shape and kl.abs().max() < 1e-10  # the reference is the initial model
    kl = kl_after_a_perturbation(policy, rollout, idx)
    with torch.no_grad():
        _, v = flow_matching_scores(policy.model, rollout.sample, idx)
        _, v_ref = flow_matching_scores(policy.reference_model(), rollout.sample, idx)
    expected = 0.5 * (v - v_ref).double().pow(2).flatten(2).mean(-1)
    assert expected.min() > 0
    torch.testing.assert_close(kl.detach().double(), expected, rtol=1e-4, atol=1e-12)


def test_trains_end_to_end(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--config", str(TINY_DIFFUSION), "--out", str(out), "log.tensorboard=false",
            "log.stdout=false", "loss.beta=0.1", "loss.kl=closed_form", "train.steps=2", "advantage.credit=frame",
            "reward.mode=loglik", "loss.objective=flow_matching",
            "train.inner_epochs=1", "train.micro_batch_size=8", "train.grad_accumulation=1"]  # one update a step
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[1]["adv/abs_max"] > 0 and records[1]["optim/grad_norm"] > 0
    assert records[1]["loss/ratio_mean"] == pytest.approx(1.0, abs=1e-3)
    assert all(r["loss/kl"] >= 0 for r in records[1:])


def matching_trainer(**overrides):
    from rlir.grpo.trainer import GRPOTrainer

    cfg, run = tiny_run(**{**MATCHING, "train.steps": "1", "loss.beta": "0.1", "reward.mode": "loglik",
                           "advantage.credit": "frame", **overrides})
    return GRPOTrainer(cfg, run.policy, run.idm, run.prompts)


@pytest.mark.parametrize("old_logprobs", ["rollout", "current"])
def test_trainer_scores_the_old_log_probs_or_takes_the_updates_own(old_logprobs):
    one_update = {"train.micro_batch_size": "4", "train.grad_accumulation": "2", "train.inner_epochs": "1"}
    trainer = matching_trainer(**{"loss.old_logprobs": old_logprobs, **(one_update if old_logprobs == "current"
                                                                         else {})})
    m = trainer.step()
    assert m["adv/abs_max"] > 0 and m["optim/grad_norm"] > 0
    assert m["loss/first_update_logratio_max"] == 0.0
    if old_logprobs == "rollout":  # the policy recorded none, so the trainer scored them before the updates
        assert "logprob_old" in trainer._last_phases and "rollout/nll_per_token" in m
    else:  # no old log-prob pass at all: every ratio is 1
        assert "logprob_old" not in trainer._last_phases and "rollout/nll_per_token" not in m
        assert m["loss/ratio_mean"] == 1.0 and m["loss/clip_frac"] == 0.0


def test_current_old_log_probs_make_the_same_single_update_as_recomputed_ones():
    """With one update a step the recomputed old log-probs equal the update's own, so skipping their pass
    (loss.old_logprobs: current) changes no weight."""
    one_update = {"train.micro_batch_size": "4", "train.grad_accumulation": "2", "train.inner_epochs": "1"}
    weights = []
    for old_logprobs in ("recompute", "current"):
        trainer = matching_trainer(**{"loss.old_logprobs": old_logprobs, **one_update})
        before = torch.cat([p.detach().flatten() for p in trainer.params])
        assert trainer.step()["optim/updates"] == 1.0
        weights.append(torch.cat([p.detach().flatten() for p in trainer.params]))
        assert (weights[-1] - before).abs().max() > 1e-6  # the update moved the weights
    assert (weights[0] - weights[1]).abs().max() < 1e-7


@pytest.mark.parametrize("sigmas", ["[0.5]", "[0.6,0.5]", "[0.2,1.2]", "[-0.1,0.5]"])
def test_config_rejects_bad_train_sigmas(sigmas):
    with pytest.raises(ConfigError, match="train_sigmas"):
        tiny_run(**{"loss.train_sigmas": sigmas})


def test_policy_rejects_bad_arguments():
    _, run = tiny_run()
    with pytest.raises(ValueError, match="train_sigmas"):
        FlowMatchingPolicy(run.policy.model, train_sigmas=(0.9, 0.1))


def test_the_objective_picks_the_policy_class():
    assert type(tiny_run()[1].policy) is SDEStepPolicy
    assert type(tiny_run(**MATCHING)[1].policy) is FlowMatchingPolicy
    with pytest.raises(ConfigError, match=r"^loss\.objective: must be one of \['sde_step', 'flow_matching'\]"):
        tiny_run(**{"loss.objective": "elbo"})


def test_the_rollout_keeps_the_sde_frames_but_not_their_trajectory():
    """Sampling for flow matching draws what the SDE-step objective's rollout draws (the same frames), but records
    no trajectory or step log-probs: nothing scores them."""
    _, run = tiny_run(**MATCHING)
    _, sde_run = tiny_run()
    prompts = run.prompts.next()
    flow = run.policy.rollout(prompts, 2, generator=torch.Generator().manual_seed(6)).sample.flow
    recorded = sde_run.policy.rollout(prompts, 2, generator=torch.Generator().manual_seed(6)).sample
    assert flow.trajectory is None and flow.log_probs is None and flow.means is None
    assert recorded.trajectory is not None
    assert torch.equal(flow.frames, recorded.frames)


def test_a_slot_is_the_sum_over_its_elements_with_the_means_gradient():
    mean = torch.tensor([-0.5, -2.0], requires_grad=True)
    logp = summed(mean, 100)
    torch.testing.assert_close(logp.detach(), torch.tensor([-50.0, -200.0]))
    logp.sum().backward()
    torch.testing.assert_close(mean.grad, torch.ones(2))  # the mean's gradient: the shipped lrs hold


def _moving_rollout(seed: int, **overrides):
    """A tiny run's policy, its DiT's velocity made non-zero, one rollout of it and the rollout's slot indices."""
    _, run = tiny_run(**{**MATCHING, **overrides})
    moving(run.policy.model)
    rollout = run.policy.rollout(run.prompts.next(), 4, generator=torch.Generator().manual_seed(seed))
    return run.policy, rollout, torch.arange(len(rollout))


@pytest.mark.parametrize("objective", ["flow_matching", "sde_step"])
def test_the_clip_acts_on_a_large_enough_update(objective):
    """The ratio is of the summed log-probs: an update that moves each element's log-prob by ~1e-2 leaves the
    clip range, where, as means over the elements, every ratio stayed inside it."""
    policy, rollout, idx = _moving_rollout(3, **{"loss.objective": objective})
    with torch.no_grad():
        old = policy.logprobs(rollout, idx)
        g = torch.Generator().manual_seed(4)
        for p in policy.model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    logp = policy.logprobs(rollout, idx)
    adv = torch.tensor([1.0, -1.0]).repeat(len(rollout) // 2)
    elements = rollout.sample.frames[0, 0].numel()
    _, m = grpo_loss(logp, old, adv, rollout.mask, eps_low=0.2, eps_high=0.28)
    assert m["clip_frac"] > 0.2
    _, as_means = grpo_loss(logp / elements, old / elements, adv, rollout.mask, eps_low=0.2, eps_high=0.28)
    assert as_means["clip_frac"] == 0  # what the mean gave: the clip never acted


@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_bounded_objective_cannot_be_driven_below_its_bound(sign):
    """Whatever the advantage's sign, optimising the flow-matching objective against the old log-probs stops at
    the clip: a negative slot's loss is |A| max(ratio, 1 - eps_low) >= |A| (1 - eps_low), and its flow-matching
    error stops rising. Without fixed old log-probs (loss.old_logprobs: current over many updates) the same drive
    pushes the velocity away from the target faster and faster (at lr 0.05 it reaches NaN)."""
    eps_low, eps_high = 0.2, 0.28
    drift = {}  # sign * (log p - old log p), averaged over the slots, after 20 and 40 SGD steps
    for anchored in (True, False):
        policy, rollout, idx = _moving_rollout(5)
        with torch.no_grad():
            old = policy.logprobs(rollout, idx)
        adv = torch.full((len(rollout),), sign)
        optimizer = torch.optim.SGD(policy.trainable_parameters(), lr=0.01)
        for step in range(1, 41):
            logp = policy.logprobs(rollout, idx)
            loss, m = grpo_loss(logp, old if anchored else None, adv, rollout.mask, eps_low=eps_low,
                                eps_high=eps_high)
            if anchored:  # the bound, for either sign: -A clip(ratio) at worst
                assert loss.item() >= (1 - eps_low if sign < 0 else -(1 + eps_high)) - 1e-6
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step in (20, 40):
                with torch.no_grad():
                    drift[anchored, step] = (sign * (policy.logprobs(rollout, idx) - old)).mean().item()
        if anchored:
            assert m["clip_frac"] == 1.0  # every slot clipped: no gradient is left, the drive has stopped
            assert drift[True, 40] == drift[True, 20] < 1.0
    if sign < 0:  # the unbounded term: the error rises ever faster
        assert drift[False, 40] > 2 * drift[False, 20] > 20 * drift[True, 40]
