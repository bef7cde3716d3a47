"""What makes N ranks compute what one process computes, checked in one process: a prompt's samples do not
depend on the rest of its batch (one generator per prompt group), and the minibatch order gives every rank
the same share of every minibatch whatever N."""
import pytest
import torch

from rlir.grpo.distributed import minibatch_orders
from rlir.parallel import Parallel
from rlir.models.generators import GroupGenerators

from .conftest import TINY


def _policy(kind, overrides=()):
    from rlir.grpo.builders import build_run
    from rlir.grpo.config import load_config

    cfg = load_config(TINY[kind], list(overrides))
    run = build_run(cfg, torch.device("cpu"))
    return run.policy, run.prompts.next()


@pytest.mark.parametrize("kind", ["ar", "diffusion"])
def test_a_prompt_samples_the_same_alone_or_in_a_batch(kind):
    policy, prompts = _policy(kind, ["rollout.prompts_per_step=4"])
    g = 3
    with torch.no_grad():
        batch = policy.rollout(prompts, g, generator=GroupGenerators.seeded(0, 5, range(4), "cpu"))
        halves = [policy.rollout(prompts.rows(lo, lo + 2), g,
                                 generator=GroupGenerators.seeded(0, 5, range(lo, lo + 2), "cpu"))
                  for lo in (0, 2)]
    whole = policy.decode(batch)
    parts = torch.cat([policy.decode(h) for h in halves])
    assert torch.equal(whole, parts)  # the same videos, rank by rank
    torch.testing.assert_close(batch.old_logp, torch.cat([h.old_logp for h in halves]), atol=1e-5, rtol=0)
    # and a different step draws different samples
    with torch.no_grad():
        other = policy.rollout(prompts, g, generator=GroupGenerators.seeded(0, 6, range(4), "cpu"))
    assert not torch.equal(policy.decode(other), whole)


@pytest.mark.parametrize("prompts,group,minibatches", [(4, 4, 2), (4, 4, 8), (8, 2, 4), (2, 8, 1), (4, 8, 16)])
def test_every_rank_gets_an_equal_share_of_every_minibatch(prompts, group, minibatches):
    one = minibatch_orders(7, 3, 2, prompts, group, minibatches)
    size = prompts * group // minibatches
    for epoch in range(2):
        assert sorted(one[epoch].tolist()) == list(range(prompts * group))
        expected = [set(one[epoch][k * size:(k + 1) * size].tolist()) for k in range(minibatches)]
        for world in (2, 4):
            if prompts % world or size % world:
                continue
            per_rank = prompts * group // world
            parts = [minibatch_orders(7, 3, 2, prompts, group, minibatches, Parallel(r, world))[epoch] + r * per_rank
                     for r in range(world)]
            share = size // world
            got = [set(torch.cat([p[k * share:(k + 1) * share] for p in parts]).tolist())
                   for k in range(minibatches)]
            assert got == expected
    assert not torch.equal(one[0], minibatch_orders(7, 4, 1, prompts, group, minibatches)[0])  # a new step reshuffles
