"""The compiled rollout (rlir.models.compiled): the AR decode step and the DiT denoising step trace as one graph
each (no graph breaks), and compiled rollouts sample what eager ones sample from the same generator."""
import pytest
import torch

from rlir.models.compiled import compile_mode
from rlir.models.dit_world_model import DiTWorldModel
from rlir.models.flow_sampling import _static_velocity
from rlir.models.flow_sampling import generate as flow_generate
from rlir.models import sampling
from rlir.models.sampling import _decode_step, _prefix_decode_step, generate


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def tiny_dit(seed=0, **overrides):
    torch.manual_seed(seed)
    model = DiTWorldModel(**{**dict(in_channels=4, frame_size=4, patch_size=1, action_head_sizes=[5, 3], n_layers=2,
                                    d_model=32, n_heads=2, max_frames=5), **overrides}).eval()
    for module in model.modules():  # adaLN-Zero starts at zero velocity: give the step something to compute
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.1)
    return model


def ar_prompt(model, batch=2, n_steps=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    context = torch.randint(0, model.config.codebook_size, (batch, 1, model.config.tokens_per_frame), generator=g)
    actions = torch.stack([torch.randint(0, n, (batch, n_steps), generator=g) for n in model.head_sizes], -1)
    return context, actions


@torch.no_grad()
def test_ar_decode_step_traces_as_one_graph_without_breaks(make_model, conditioning, random_clip):
    model = make_model(**conditioning)
    codes, actions = random_clip(model, batch=3, frames=3)
    history = model.sequence(codes, actions)
    cache = model.new_cache(3, max_len=history.shape[1])
    model.forward_tokens(history[:, :5], cache)  # a prefill, as generate runs first
    for s in (1, 1 + model.num_action_heads):  # a code, or the frame's last code with the next action's tokens
        ks, vs = [t.clone() for t in cache.k], [t.clone() for t in cache.v]
        for step, position in ((_decode_step, torch.arange(5, 5 + s)), (_prefix_decode_step, 5)):
            explanation = torch._dynamo.explain(step)(model, history[:, 5:5 + s], ks, vs, history, position)
            assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons


@torch.no_grad()
def test_ar_decode_step_equals_the_eager_step(make_model, conditioning, random_clip):
    model = make_model(**conditioning)
    codes, actions = random_clip(model, batch=2, frames=3)
    ids = model.sequence(codes, actions)
    start, s = 9, 1 + model.num_action_heads
    eager = model.new_cache(2, max_len=ids.shape[1])
    model.forward_tokens(ids[:, :start], eager)
    static = model.new_cache(2, max_len=ids.shape[1])
    model.forward_tokens(ids[:, :start], static)
    expected = model.output(model.forward_tokens(ids[:, start:start + s], eager, ids)[:, -1])
    got = model.decode_step(ids[:, start:start + s], [t.clone() for t in static.k], [t.clone() for t in static.v], ids, torch.arange(start, start + s))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # compiles (10-25 s on one cold CPU thread)
def test_compiled_ar_rollout_samples_the_eager_tokens(make_model, conditioning):
    """The CPU step (attention over the filled prefix, a symbolic start)."""
    model = make_model(**conditioning)
    context, actions = ar_prompt(model)
    eager_tokens, eager_logp = generate(model, context, actions, num_samples=3, temperature=0.9,
                                        generator=torch.Generator().manual_seed(1))
    for _ in range(2):  # the second call reuses the graphs and the static buffers
        tokens, logp = generate(model, context, actions, num_samples=3, temperature=0.9,
                                generator=torch.Generator().manual_seed(1), compile=True)
        assert torch.equal(tokens, eager_tokens)
        torch.testing.assert_close(logp, eager_logp, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_the_static_cuda_step_compiled_on_cpu_samples_the_eager_tokens(make_model, monkeypatch):
    """The CUDA step (static shapes, masked attention over the whole cache, per-layer static buffers), here
    compiled for the CPU: the same tokens as eager."""
    monkeypatch.setattr(sampling, "_static_step", lambda device: True)
    model = make_model(frame_action_embedding=True, frame_grid=[2, 2], previous_frame_input=True)
    context, actions = ar_prompt(model)
    eager_tokens, eager_logp = generate(model, context, actions, num_samples=3, temperature=0.9,
                                        generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        tokens, logp = generate(model, context, actions, num_samples=3, temperature=0.9,
                                generator=torch.Generator().manual_seed(1), compile=True)
        assert torch.equal(tokens, eager_tokens)
        torch.testing.assert_close(logp, eager_logp, atol=1e-4, rtol=0)


@torch.no_grad()
def test_dit_denoising_step_traces_as_one_graph_without_breaks():
    model = tiny_dit(previous_frame_neighbourhood=True)
    cache = model.new_cache(3, 4)
    frame = torch.randn(3, 4, 4, 4)
    model.cache_frames(frame[:, None], torch.zeros(3, 1, 2, dtype=torch.long), cache)
    explanation = torch._dynamo.explain(_static_velocity)(model, frame, torch.tensor(0.5),
                                                          torch.zeros(3, 2, dtype=torch.long), [t.clone() for t in cache.k], [t.clone() for t in cache.v], frame,
                                                          torch.tensor(1))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons


@pytest.mark.slow  # compiles (10-25 s on one cold CPU thread)
@pytest.mark.parametrize("sampler", ["sde", "ode"])
def test_compiled_dit_rollout_samples_the_eager_frames(sampler):
    model = tiny_dit()
    context = torch.randn(2, 1, 4, 4, 4)
    actions = torch.stack([torch.randint(0, 5, (2, 3)), torch.randint(0, 3, (2, 3))], -1)
    kwargs = dict(num_samples=3, num_steps=3, sampler=sampler)
    eager = flow_generate(model, context, actions, generator=torch.Generator().manual_seed(1), **kwargs)
    for _ in range(2):
        compiled = flow_generate(model, context, actions, generator=torch.Generator().manual_seed(1), compile=True,
                                 **kwargs)
        torch.testing.assert_close(compiled.frames, eager.frames, atol=1e-4, rtol=0)
        if sampler == "sde":
            torch.testing.assert_close(compiled.log_probs, eager.log_probs, atol=1e-4, rtol=0)
            torch.testing.assert_close(compiled.trajectory, eager.trajectory, atol=1e-4, rtol=0)


def test_compile_option():
    assert compile_mode(False) is None and compile_mode(True, "cpu") == "default"
    assert compile_mode(True, "cuda") == "reduce-overhead" and compile_mode("max-autotune") == "max-autotune"
    with pytest.raises(ValueError, match="compile must be"):
        compile_mode("fast")


def test_compile_needs_the_cache(make_model):
    model = make_model()
    context, actions = ar_prompt(model)
    with pytest.raises(ValueError, match="use_cache"):
        generate(model, context, actions, use_cache=False, compile=True)


@pytest.mark.slow  # compiles (10-25 s on one cold CPU thread)
def test_rollout_compile_config_key_runs_a_compiled_grpo_step():
    from pathlib import Path

    import yaml

    from rlir.grpo import ConfigError, config_from_dict
    from rlir.grpo.builders import build_run
    from rlir.grpo.trainer import GRPOTrainer

    data = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "tiny_ar.yaml").read_text())
    data["log"] = {"tensorboard": False, "stdout": False, "jsonl": False}
    data["train"].update({"eval_interval": 0, "checkpoint_interval": 0})
    data["rollout"]["compile"] = "yes"
    with pytest.raises(ConfigError, match="rollout.compile"):
        config_from_dict(data)
    data["rollout"]["compile"] = True
    cfg = config_from_dict(data)
    run = build_run(cfg, torch.device("cpu"))
    assert run.policy.compile is True
    prompts = run.prompts.next()
    compiled = run.policy.rollout(prompts, 4, generator=torch.Generator().manual_seed(3))
    run.policy.compile = False
    eager = run.policy.rollout(prompts, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(compiled.sample.tokens, eager.sample.tokens)
    torch.testing.assert_close(compiled.old_logp, eager.old_logp, atol=1e-4, rtol=0)
    run.policy.compile = True
    metrics = GRPOTrainer(cfg, run.policy, run.idm, run.prompts, device=torch.device("cpu")).step()
    assert metrics["perf/rollout_tokens_per_s"] > 0


# ---- on a GPU: the same under CUDA graphs ("reduce-overhead") -------------------------------------------------

@pytest.mark.gpu
def test_cuda_graph_ar_rollout_samples_the_eager_tokens(make_model, conditioning):
    model = make_model(**conditioning).cuda()
    context, actions = (t.cuda() for t in ar_prompt(model))
    eager_tokens, eager_logp = generate(model, context, actions, num_samples=3, temperature=0.9,
                                        generator=torch.Generator("cuda").manual_seed(1))
    for _ in range(3):  # record, then replay the CUDA graphs
        tokens, logp = generate(model, context, actions, num_samples=3, temperature=0.9,
                                generator=torch.Generator("cuda").manual_seed(1), compile=True)
        assert torch.equal(tokens, eager_tokens)
        torch.testing.assert_close(logp, eager_logp, atol=1e-4, rtol=0)


@pytest.mark.gpu
def test_cuda_graph_dit_rollout_samples_the_eager_frames():
    model = tiny_dit().cuda()
    context = torch.randn(2, 1, 4, 4, 4, device="cuda")
    actions = torch.stack([torch.randint(0, 5, (2, 3)), torch.randint(0, 3, (2, 3))], -1).cuda()
    kwargs = dict(num_samples=3, num_steps=3, sampler="sde")
    eager = flow_generate(model, context, actions, generator=torch.Generator("cuda").manual_seed(1), **kwargs)
    for _ in range(3):
        compiled = flow_generate(model, context, actions, generator=torch.Generator("cuda").manual_seed(1),
                                 compile=True, **kwargs)
        torch.testing.assert_close(compiled.frames, eager.frames, atol=1e-4, rtol=0)
        torch.testing.assert_close(compiled.log_probs, eager.log_probs, atol=1e-4, rtol=0)
