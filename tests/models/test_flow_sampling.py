import pytest
import torch

from rlir.models.flow_sampling import (flow_sigmas, generate, make_scheduler, stochastic_steps,
                                       transition_logprobs)

from test_dit_world_model import make_model, random_clip


def prompt(model, batch=2, n_ctx=1, steps=3, seed=0):
    frames, actions = random_clip(model, batch, n_ctx + steps, seed)
    return frames[:, :n_ctx], actions[:, n_ctx - 1:], actions[:, :n_ctx - 1]


def run(model, context, actions, seed=1, **kwargs):
    return generate(model, context, actions, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_schedule_and_the_scheduler_step_is_euler():
    assert flow_sigmas(4).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    shifted = flow_sigmas(4, shift=3.0)
    assert shifted[0] == 1 and shifted[-1] == 0 and bool((shifted[1:-1] > flow_sigmas(4)[1:-1]).all())
    scheduler = make_scheduler(4)
    x, v = torch.randn(3, 5), torch.randn(3, 5)
    out = scheduler.step(v, scheduler.timesteps[1], x).prev_sample
    torch.testing.assert_close(out, x - 0.25 * v)
    with pytest.raises(ValueError, match="num_steps"):
        make_scheduler(0)
    with pytest.raises(ValueError, match="shift"):
        make_scheduler(4, shift=0)


def test_stochastic_step_choices():
    assert stochastic_steps(6).tolist() == list(range(6))
    picked = stochastic_steps(6, 0.5, torch.Generator().manual_seed(0))
    assert len(picked) == 3 and picked.tolist() == sorted(set(picked.tolist()))
    assert torch.equal(picked, stochastic_steps(6, 0.5, torch.Generator().manual_seed(0)))
    assert len(stochastic_steps(6, 0.01)) == 1
    assert stochastic_steps(6, (4, 5)).tolist() == [4, 5]  # a window clipped to the schedule
    for bad in (0.0, 1.5, (6, 1), (0, 0), "some", (1, 2, 3)):
        with pytest.raises(ValueError, match="stochastic"):
            stochastic_steps(6, bad)


@pytest.mark.parametrize("sampler, previous", [("ode", {}), ("sde", {}), ("sde", {"previous_frame_input": False}),
                                               ("sde", {"previous_frame_neighbourhood": True})])
def test_cached_generation_equals_uncached(sampler, previous):
    model = make_model(**previous)
    context, actions, context_actions = prompt(model, n_ctx=2, steps=3)
    options = dict(context_actions=context_actions, num_samples=2, num_steps=3, sampler=sampler)
    cached = run(model, context, actions, **options)
    uncached = run(model, context, actions, use_cache=False, **options)
    assert cached.frames.shape == (4, 3, 4, 4, 4)
    torch.testing.assert_close(cached.frames, uncached.frames, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(cached.frames[0], cached.frames[1])  # the G samples of a prompt differ
    torch.testing.assert_close(cached.context[1], context[0])  # row b * G + g belongs to prompt b
    if sampler == "sde":
        torch.testing.assert_close(cached.log_probs, uncached.log_probs, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(cached.trajectory[:, :, -1], cached.frames)


def test_recorded_logprobs_equal_a_recompute_and_are_differentiable():
    model = make_model()
    context, actions, _ = prompt(model, batch=2, steps=3)
    sample = run(model, context, actions, num_samples=2, num_steps=4, sampler="sde", noise_level=0.8,
                 stochastic=(1, 2))
    assert sample.steps.tolist() == [1, 2]
    assert sample.log_probs.shape == (4, 3, 2) and sample.means.shape == (4, 3, 2, 4, 4, 4)
    assert sample.x_t.shape == sample.x_next.shape == (4, 3, 2, 4, 4, 4)
    scores = transition_logprobs(model, sample)
    torch.testing.assert_close(scores.log_probs, sample.log_probs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(scores.means, sample.means, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores.stds, sample.stds)
    rows = torch.tensor([3, 0])
    subset = transition_logprobs(model, sample, rows)
    torch.testing.assert_close(subset.log_probs, sample.log_probs[rows], atol=1e-4, rtol=1e-4)
    subset.log_probs.sum().backward()
    assert model.patch_out.weight.grad is not None and model.patch_out.weight.grad.abs().sum() > 0
    with torch.no_grad():
        model.patch_out.bias.add_(0.1)  # new weights score the old transitions differently
    assert not torch.allclose(transition_logprobs(model, sample).log_probs, sample.log_probs, atol=1e-3)


def test_noise_level_zero_is_the_ode_sampler():
    model = make_model()
    context, actions, _ = prompt(model, steps=3)
    ode = run(model, context, actions, num_steps=4, sampler="ode")
    sde = run(model, context, actions, num_steps=4, sampler="sde", noise_level=0.0)
    torch.testing.assert_close(sde.frames, ode.frames, atol=1e-6, rtol=1e-6)
    assert ode.trajectory is None and ode.log_probs is None


def test_fractional_steps_record_only_their_transitions():
    model = make_model()
    context, actions, _ = prompt(model, steps=2)
    sample = run(model, context, actions, num_steps=4, sampler="sde", stochastic=0.5)
    assert len(sample.steps) == 2 and sample.log_probs.shape == (2, 2, 2)
    euler = [i for i in range(4) if i not in sample.steps.tolist()]
    sigmas = sample.sigmas
    with torch.no_grad():  # an Euler step of frame 0 reproduces the recorded trajectory
        i = euler[0]
        cache = model.new_cache(2, 3)  # frame 0 needs only the context in the cache
        model.cache_frames(context, model.frame_actions(actions)[:, :1], cache)
        x = sample.trajectory[:, 0, i]
        v = model.cached_velocity(x, sigmas[i].expand(2), actions[:, 0], cache, previous=context[:, -1])
        expected = x + (sigmas[i + 1] - sigmas[i]) * v
    torch.testing.assert_close(sample.trajectory[:, 0, i + 1], expected, atol=1e-5, rtol=1e-5)


def test_bad_arguments_raise():
    model = make_model()
    context, actions, context_actions = prompt(model, n_ctx=2, steps=2)
    with pytest.raises(ValueError, match="sampler"):
        generate(model, context, actions, context_actions=context_actions, sampler="dpm")
    with pytest.raises(ValueError, match="context_actions"):
        generate(model, context, actions)
    with pytest.raises(ValueError, match="max_frames"):
        generate(model, context, torch.cat([actions] * 3, 1), context_actions=context_actions)
    with pytest.raises(ValueError, match="num_samples"):
        generate(model, context, actions, context_actions=context_actions, num_samples=0)
    with pytest.raises(ValueError, match="context must be float"):
        generate(model, context[:, :, :2], actions, context_actions=context_actions)
    ode = generate(model, context, actions, context_actions=context_actions, num_steps=2)
    with pytest.raises(ValueError, match="sampler='sde'"):
        transition_logprobs(model, ode)


def test_eval_generates_videos_with_a_diffusion_model():
    from rlir.eval.generation import generate_videos

    model = make_model(in_channels=3, frame_size=64, patch_size=16, frame_space="pixels", n_layers=1)
    first = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    actions = torch.stack([torch.randint(0, 5, (3, 2)), torch.randint(0, 3, (3, 2))], -1)
    videos = generate_videos(model, None, first, actions, seed=0, batch=2)
    assert videos.shape == (3, 3, 3, 64, 64) and videos.dtype == torch.uint8
    assert torch.equal(videos[:, 0], first)
    assert torch.equal(videos, generate_videos(model, None, first, actions, seed=0, batch=2))
