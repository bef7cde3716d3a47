"""Cases that kill mutants of rlir/policies/ar.py and rlir/policies/policy.py which the GRPO tests let through
(docs/mutation.md): ARPolicy's defaults, its top_k warning, the frozen tokenizer, the tokenizer checks,
the autocast rollout copy, rescoring with two context frames; Prompts.rows with context actions; the base
Policy's messages; ModelPolicy.load_state_dict."""
import warnings

import pytest
import torch
import torch.nn as nn

from rlir.models import ARWorldModel
from rlir.policies import ARPolicy, Policy, Prompts

WARNING = (r"^top_k makes the sampler differ from the policy being optimised: tokens come from the truncated "
           r"distribution while old and new log-probs are under the full softmax, so GRPO's importance ratios are "
           r"off-policy-biased \(top_k is for evaluating\)$")


class Tokenizer(nn.Module):
    """4x4 frames <-> a 2x2 grid of 16 codes (grey level // 16), with one parameter to freeze."""

    def __init__(self, codebook_size=16, code_grid=(2, 2)):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        if codebook_size is not None:
            self.codebook_size = codebook_size
        if code_grid is not None:
            self.code_grid = code_grid

    def encode(self, frames):
        return (frames[..., 0, ::2, ::2].long() // 16).clamp(0, 15)

    def decode(self, codes):
        grey = ((codes.float() * 16 + 8) / 255).repeat_interleave(2, -1).repeat_interleave(2, -2)
        return grey.unsqueeze(-3).expand(*grey.shape[:-2], 3, *grey.shape[-2:]).contiguous()


def model(seed=0):
    torch.manual_seed(seed)
    return ARWorldModel(codebook_size=16, tokens_per_frame=4, action_head_sizes=[4], n_layers=1, d_model=32,
                        n_heads=2, n_kv_heads=1, max_frames=4)


def prompts(context_frames=1, b=2, n=2):
    g = torch.Generator().manual_seed(1)
    context = torch.randint(0, 256, (b, context_frames, 3, 4, 4), generator=g, dtype=torch.uint8)
    actions = torch.randint(0, 4, (b, n, 1), generator=g)
    ca = torch.randint(0, 4, (b, context_frames - 1, 1), generator=g) if context_frames > 1 else None
    return Prompts(context, actions, ca)


def test_defaults_and_no_warning_without_top_k():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy = ARPolicy(model(), Tokenizer())
    assert (policy.temperature, policy.top_k, policy.compile) == (1.0, None, False)


def test_top_k_warns():
    with pytest.warns(UserWarning, match=WARNING):
        ARPolicy(model(), Tokenizer(), top_k=3)


def test_the_tokenizer_is_frozen_and_in_eval_mode():
    tokenizer = Tokenizer()
    ARPolicy(model(), tokenizer)
    assert not tokenizer.training and not tokenizer.scale.requires_grad


def test_tokenizer_checks():
    with pytest.raises(ValueError, match=r"^tokenizer code grid \(3, 3\) has 9 codes, the world model expects "
                                         r"tokens_per_frame=4$"):
        ARPolicy(model(), Tokenizer(code_grid=(3, 3)))
    with pytest.raises(ValueError, match=r"^tokenizer codebook_size 8 != world model codebook_size 16$"):
        ARPolicy(model(), Tokenizer(codebook_size=8))
    ARPolicy(model(), Tokenizer(code_grid=(1, 4)))  # 1 x 4 = 4 codes a frame is fine
    ARPolicy(model(), Tokenizer(codebook_size=None, code_grid=None))  # a tokenizer need not say either


def test_autocast_rollout_copy_is_kept_refreshed_frozen_and_cast():
    policy = ARPolicy(model(), Tokenizer())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = policy._rollout_model()
        assert first is not policy.model and first.dtype == torch.bfloat16
        assert not first.training and not any(p.requires_grad for p in first.parameters())
        with torch.no_grad():
            for p in policy.model.parameters():
                p.add_(0.5)
        second = policy._rollout_model()
    assert second is first  # refreshed in place, not rebuilt
    for copied, live in zip(second.state_dict().values(), policy.model.state_dict().values()):
        torch.testing.assert_close(copied, live.to(torch.bfloat16))
    assert policy._rollout_model() is policy.model  # outside autocast: the model itself


def test_rescoring_with_two_context_frames_equals_recording():
    policy = ARPolicy(model(), Tokenizer())
    rollout = policy.rollout(prompts(context_frames=2), 3, torch.Generator().manual_seed(0))
    idx = torch.arange(len(rollout))
    torch.testing.assert_close(policy.logprobs(rollout, idx), rollout.old_logp, rtol=1e-4, atol=1e-4)


def test_rows_keep_the_context_actions():
    p = prompts(context_frames=2, b=4)
    rows = p.rows(1, 3)
    assert torch.equal(rows.context, p.context[1:3]) and torch.equal(rows.actions, p.actions[1:3])
    assert torch.equal(rows.context_actions, p.context_actions[1:3])


class Bare(Policy):
    def rollout(self, prompts, num_samples, generator=None):
        raise AssertionError

    def decode(self, rollout):
        raise AssertionError

    def logprobs(self, rollout, indices):
        raise AssertionError

    def trainable_parameters(self):
        return []

    def state_dict(self):
        return {}

    def load_state_dict(self, state_dict):
        pass


def test_base_policy_messages():
    with pytest.raises(NotImplementedError, match=r"^Bare has no reference model: set loss\.beta: 0$"):
        Bare().reference_logprobs(None, None)
    with pytest.raises(NotImplementedError, match=r"^Bare has no closed-form KL: set loss\.kl: k3$"):
        Bare().logprobs_and_kl(None, None)


def test_model_policy_loads_a_state_dict():
    policy = ARPolicy(model(0), Tokenizer())
    other = model(1).state_dict()
    policy.load_state_dict(other)
    for got, want in zip(policy.state_dict().values(), other.values()):
        assert torch.equal(got, want)


def test_diffusion_policy_defaults():
    from rlir.policies import EVAL_ODE_STEPS, SDEStepPolicy
    from rlir.kernels.flow_sde_step import SIGMA_MAX

    p = SDEStepPolicy(nn.Linear(1, 1))
    assert (p.num_steps, p.noise_level, p.stochastic) == (8, 0.7, "all")
    assert (p.sigma_max, p.eval_steps, p.compile, p.tokenizer) == (SIGMA_MAX, EVAL_ODE_STEPS, False, None)


def test_tokenizer_grid_message_counts_rows_times_columns():
    with pytest.raises(ValueError, match=r"^tokenizer code grid \(2, 3\) has 6 codes, the world model expects "
                                         r"tokens_per_frame=4$"):
        ARPolicy(model(), Tokenizer(code_grid=(2, 3)))


def test_diffusion_policy_needs_exploration_noise_and_freezes_its_tokenizer():
    from rlir.policies import SDEStepPolicy

    for level in (0.0, -0.5):
        with pytest.raises(ValueError, match=rf"^noise_level must be > 0 for GRPO \(at 0 the sampler is deterministic "
                                             rf"and has no log-probs\), got {level!r}$"):
            SDEStepPolicy(nn.Linear(1, 1), noise_level=level)
    tokenizer = Tokenizer()
    SDEStepPolicy(nn.Linear(1, 1), tokenizer)
    assert not tokenizer.training and not tokenizer.scale.requires_grad


def test_after_context_puts_the_last_real_context_frame_first():
    from rlir.policies.rollout import after_context

    p = prompts(context_frames=2)
    generated = torch.zeros(2 * 3, 2, 3, 4, 4, dtype=torch.uint8)  # 3 samples of each of 2 prompts
    video = after_context(p, 3, generated)
    assert video.shape == (6, 3, 3, 4, 4)
    assert torch.equal(video[:, 0], p.context[:, -1].repeat_interleave(3, 0))
    assert torch.equal(video[:, 1:], generated)


def test_eval_and_train_switch_the_model_mode():
    policy = ARPolicy(model(), Tokenizer())
    assert policy.eval() is policy and not policy.model.training
    assert policy.train() is policy and policy.model.training
    assert policy.train(False) is policy and not policy.model.training


def test_reference_model_is_a_frozen_eval_copy_and_needs_a_factory():
    ref = model(1)
    policy = ARPolicy(model(0), Tokenizer(), reference_factory=lambda: ref)
    got = policy.reference_model()
    assert got is ref and not got.training and not any(p.requires_grad for p in got.parameters())
    assert policy.reference_model() is got  # built once
    with pytest.raises(RuntimeError, match=r"^ARPolicy has no reference_factory: the KL term \(loss\.beta > 0\) "
                                           r"needs the initial weights$"):
        ARPolicy(model(0), Tokenizer()).reference_model()


@pytest.mark.parametrize("kind", ["ar", "diffusion"])
def test_a_bad_compile_mode_fails_at_construction(kind):
    from rlir.policies import SDEStepPolicy

    with pytest.raises(ValueError, match=r"^compile must be False, True or a torch\.compile mode"):
        if kind == "ar":
            ARPolicy(model(), Tokenizer(), compile="fastest")
        else:
            SDEStepPolicy(nn.Linear(1, 1), compile="fastest")
