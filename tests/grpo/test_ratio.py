"""At the first inner update the importance ratio is 1 and the clipped loss equals the unclipped one."""
import pytest
import torch

from rlir.kernels import grpo_loss


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_recorded_logprobs_match_teacher_forced(toy_trainer, temperature):
    trainer = toy_trainer(rollout={"temperature": temperature})
    policy = trainer.policy
    prompts = trainer.prompts.next()
    rollout = policy.rollout(prompts, 8, generator=torch.Generator().manual_seed(0))
    idx = torch.arange(len(rollout))
    logp = policy.logprobs(rollout, idx)
    assert logp.shape == rollout.old_logp.shape == (32, 2 * 4)
    assert logp.requires_grad
    ratio = torch.exp(logp.detach() - rollout.old_logp)
    assert (ratio - 1).abs().max() < 1e-4

    adv = torch.randn(len(rollout), generator=torch.Generator().manual_seed(1))
    clipped, m = grpo_loss(logp, rollout.old_logp, adv, rollout.mask, eps_low=0.2, eps_high=0.2)
    unclipped, _ = grpo_loss(logp, rollout.old_logp, adv, rollout.mask, eps_low=0.999, eps_high=1e9)
    assert clipped.item() == unclipped.item()
    assert m["clip_frac"].item() == 0.0
    g1, = torch.autograd.grad(clipped, logp, retain_graph=True)
    g2, = torch.autograd.grad(unclipped, logp)
    assert torch.equal(g1, g2)


@pytest.mark.parametrize("old_logprobs", ["rollout", "recompute"])
def test_trainer_first_update_ratio(toy_trainer, old_logprobs):
    trainer = toy_trainer(loss={"old_logprobs": old_logprobs}, train={"steps": 1})
    m = trainer.step()
    assert m["adv/abs_max"] > 0 and m["optim/grad_norm"] > 0  # a learning signal: the second update is off-policy
    if old_logprobs == "recompute":
        assert m["loss/first_update_logratio_max"] == 0.0
    else:
        assert m["loss/first_update_logratio_max"] < 1e-4
    # Two minibatches: the second is scored after one update, so only the first is exactly on-policy.
    assert m["optim/updates"] == 2.0


def test_single_update_is_on_policy(toy_trainer):
    trainer = toy_trainer(loss={"old_logprobs": "recompute", "beta": 0.1},
                          train={"steps": 1, "micro_batch_size": 8, "grad_accumulation": 4})
    m = trainer.step()
    assert m["adv/abs_max"] > 0 and m["optim/grad_norm"] > 0
    assert m["optim/updates"] == 1.0
    assert m["loss/ratio_mean"] == pytest.approx(1.0, abs=1e-7)
    assert m["loss/clip_frac"] == 0.0
    assert m["loss/kl"] == pytest.approx(0.0, abs=1e-7)  # the reference is the initial model


def test_rollout_under_bf16_autocast(toy_trainer):
    """The path the trainer takes on CUDA (train.bf16): the rollout runs on a bf16 copy of the fp32 weights."""
    trainer = toy_trainer()
    policy = trainer.policy
    prompts = trainer.prompts.next()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        rollout = policy.rollout(prompts, 4, generator=torch.Generator().manual_seed(0))
    assert policy._rollout_copy is not None and policy._rollout_copy.dtype == torch.bfloat16
    assert next(policy.model.parameters()).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp = policy.logprobs(rollout, torch.arange(len(rollout)))
    assert logp.dtype == torch.float32
    assert (logp.detach() - rollout.old_logp).abs().max() < 0.1  # bf16 rounding only
    # The copy follows the trained weights.
    with torch.no_grad():
        policy.model.output.weight.add_(1.0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        policy.rollout(prompts, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(policy._rollout_copy.output.weight, policy.model.output.weight.to(torch.bfloat16))


def test_bf16_recomputes_the_rollouts_old_logprobs(toy_trainer):
    """Under bf16 the AR rollout samples from a bf16 copy, whose log-probs are not the training forward's: with
    loss.old_logprobs: rollout the trainer scores them again, so the first ratio is exactly 1. (CPU autocast
    stands in for CUDA's here.)"""
    trainer = toy_trainer(loss={"old_logprobs": "rollout"}, train={"steps": 1})
    trainer.bf16 = True
    m = trainer.step()
    assert trainer.policy._rollout_copy is not None  # the rollout did run on the bf16 copy
    assert "logprob_old" in trainer._last_phases
    assert m["loss/first_update_logratio_max"] == 0.0


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "seq-sum-norm"])
def test_micro_batches_split_the_minibatch_loss(toy_trainer, loss_agg):
    """Each micro-batch's loss is over its minibatch's loss_normaliser, so 4 micro-batches of 4 videos give the
    loss, gradient and update of one micro-batch of 16."""
    runs = []
    for micro, accumulation in ((16, 1), (4, 4)):
        trainer = toy_trainer(loss={"loss_agg": loss_agg, "beta": 0.1},
                              train={"steps": 1, "micro_batch_size": micro, "grad_accumulation": accumulation})
        m = trainer.step()
        assert m["adv/abs_max"] > 0 and m["optim/grad_norm"] > 0
        runs.append((m, trainer.policy.model.state_dict()))
    (one, one_weights), (four, four_weights) = runs
    for key in ("loss/loss", "optim/grad_norm", "loss/kl", "loss/clip_frac"):
        assert four[key] == pytest.approx(one[key], rel=1e-4, abs=1e-7), key
    # AdamW's first update is about lr * sign(gradient): where a gradient entry is ~0, summation-order rounding
    # moves that weight by a fraction of lr (1e-2 here), so weights are compared to 1% of lr.
    for name, value in one_weights.items():
        torch.testing.assert_close(four_weights[name], value, atol=1e-4, rtol=0, msg=name)
