"""The frame-causal DiT world model (``DiTWorldModel``) as a policy: what every diffusion objective shares.

rollout: encode the prompt's context frames to model space and run the SDE sampler
(``rlir.models.flow_sampling.generate``, sampler "sde"): G continuations per prompt sharing one cached context
pass. Every generated frame is denoised in ``num_steps`` steps; the ``stochastic`` ones are SDE steps
(``rlir.kernels.flow_sde_step``), the exploration GRPO needs. What a log-prob slot scores is the objective's, a
subclass each (``loss.objective``):
- ``SDEStepPolicy`` (``sde_step``, Flow-GRPO): each stochastic step's Gaussian transition (rlir.policies.sde_step);
- ``FlowMatchingPolicy`` (``flow_matching``, advantage-weighted flow matching): each generated frame's
  flow-matching target at a drawn noise level (rlir.policies.flow_matching).
decode: the generated frames back to uint8, after the last real context frame.
generate(..., sampler="ode" or "eval"): the deterministic ODE sampler (diffusers' FlowMatchEulerDiscreteScheduler,
``eval_steps`` Euler steps a frame, ``EVAL_ODE_STEPS`` by default), the documented evaluation sampler: it measures
the model, not the exploration noise GRPO adds.
reference_logprobs: the rollout's slots under a frozen copy of the initial weights (loss.beta > 0).
logprobs_and_kl (loss.kl: closed_form): the slots' log-probs and the objective's exact per-slot KL to the
reference model, from one scoring under each.

A slot's log-prob is the SUM over the frame's D elements (``summed``), the Gaussian's real log-likelihood, so
the ratio exp(logp - old) is the real importance ratio and the clip acts: as a mean over D = 2,592 latent
elements it never left [0.8, 1.28] and nothing clipped. Its gradient is the mean's, so the loss is the PPO
objective on the real likelihoods divided by D, the gradient scale the shipped lrs were tuned on; the
closed-form KL stays the mean, the real KL divided by D as well, so beta weighs it as before.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any, Callable, Optional, Tuple

import torch
import torch.nn as nn

from rlir.kernels.flow_sde_step import SIGMA_MAX
from rlir.models.compiled import compile_mode
from rlir.models.flow_sampling import FlowSample, generate

from .policy import ModelPolicy
from .rollout import Prompts, Rollout, after_context

# Euler ODE steps a frame when evaluating: enough that more steps no longer change the measured action-following
# (docs/experiments.md has the comparison).
EVAL_ODE_STEPS = 16


def summed(mean_logp: torch.Tensor, elements: int) -> torch.Tensor:
    """Per-element mean log-probs -> their sum over ``elements`` in value, with the mean's gradient: the ratio of
    the real likelihoods (the clip acts on it) at the gradient scale of the mean (see the module doc)."""
    return mean_logp + (elements - 1) * mean_logp.detach()


class DiffusionPolicy(ModelPolicy):
    """model: DiTWorldModel (trained); tokenizer: the VQ tokenizer for frame_space "tokenizer_latents" (None for
    pixels); num_steps: the denoising steps a frame (the scheduler's uniform sigmas, unshifted); noise_level: the
    SDE's a; stochastic: "all" or a window (start, length) of the steps (see rlir.models.flow_sampling);
    eval_steps: the ODE steps a frame of the evaluation sampler; reference_factory: returns a model with the
    initial weights (called once, lazily, only for the KL term); compile: run each denoising step compiled
    (``rlir.models.flow_sampling.generate``'s ``compile``; CUDA graphs on CUDA).

    A subclass is one objective: ``rollout`` (sample and say what each slot scores) and ``slot_scores`` /
    ``slot_kl``, from which ``score`` and ``logprobs_and_kl`` follow."""

    eval_sampler = "ode"

    def __init__(self, model: nn.Module, tokenizer: Optional[nn.Module] = None, *, num_steps: int = 8,
                 noise_level: float = 0.7, stochastic="all", sigma_max: float = SIGMA_MAX,
                 eval_steps: int = EVAL_ODE_STEPS, reference_factory: Optional[Callable[[], nn.Module]] = None,
                 compile=False):
        super().__init__(model, reference_factory)
        compile_mode(compile)  # validates
        self.compile = compile
        self.tokenizer = tokenizer.eval().requires_grad_(False) if tokenizer is not None else None
        self.num_steps, self.noise_level = num_steps, noise_level
        self.stochastic, self.sigma_max, self.eval_steps = stochastic, sigma_max, eval_steps
        if noise_level <= 0:
            raise ValueError(f"noise_level must be > 0 for GRPO (at 0 the sampler is deterministic and has no "
                             f"log-probs), got {noise_level!r}")

    @classmethod
    def from_config(cls, model: nn.Module, tokenizer: Optional[nn.Module], sampling, objective, **options):
        """The policy of ``sampling`` (``rlir.policies.config.SamplingConfig``: the run's ``rollout`` section) and
        ``objective`` (``ObjectiveConfig``: its ``loss`` section); ``options`` go to the constructor."""
        sde = sampling.sde
        return cls(model, tokenizer, num_steps=sde.num_steps, noise_level=sde.noise_level,
                   stochastic=sde.stochastic_arg(), compile=sampling.compile, **options)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return self.model.encode_frames(frames.to(self.device), self.tokenizer)

    @torch.no_grad()
    def sample_sde(self, prompts: Prompts, num_samples: int, generator,
                   record_transitions: bool = True) -> FlowSample:
        """The SDE sampler's ``num_samples`` continuations of each of ``prompts`` (on the policy's device)."""
        return generate(self.model, self.encode(prompts.context), prompts.actions,
                        context_actions=prompts.context_actions, num_samples=num_samples, num_steps=self.num_steps,
                        sampler="sde", noise_level=self.noise_level, stochastic=self.stochastic,
                        sigma_max=self.sigma_max, generator=generator, compile=self.compile,
                        record_transitions=record_transitions)

    @torch.no_grad()
    def decode(self, rollout: Rollout) -> torch.Tensor:
        frames = self.model.decode_frames(rollout.sample.frames, self.tokenizer)
        return after_context(rollout.prompts, rollout.num_samples, frames)

    @torch.no_grad()
    def generate(self, prompts: Prompts, num_samples: int = 1, *, sampler: Optional[str] = None,
                 generator: Optional[torch.Generator] = None, return_rollout: bool = False):
        if sampler not in ("ode", "eval"):
            return super().generate(prompts, num_samples, sampler=sampler, generator=generator,
                                    return_rollout=return_rollout)
        if return_rollout:
            raise ValueError("return_rollout: the ODE sampler records no log-probs, so it makes no rollout")
        prompts = prompts.to(self.device)
        sample = generate(self.model, self.encode(prompts.context), prompts.actions,
                          context_actions=prompts.context_actions, num_samples=num_samples,
                          num_steps=self.eval_steps, sampler="ode", generator=generator,
                          compile=self.compile)
        frames = self.model.decode_frames(sample.frames, self.tokenizer)
        return after_context(prompts, num_samples, frames)

    @abstractmethod
    def slot_scores(self, model: nn.Module, sample: Any, indices: torch.Tensor) -> Tuple[torch.Tensor, Any]:
        """(log-probs fp32 [len(indices), S] of the rows ``indices`` of the rollout's ``sample`` under ``model``,
        differentiable; what ``slot_kl`` compares between two models)."""

    @abstractmethod
    def slot_kl(self, current: Any, reference: Any) -> torch.Tensor:
        """The exact per-slot KL [R, S] of the current model's slots to the reference model's, from what
        ``slot_scores`` returned under each."""

    def score(self, model: nn.Module, rollout: Rollout, indices: torch.Tensor) -> torch.Tensor:
        return self.slot_scores(model, rollout.sample, indices)[0]

    def logprobs_and_kl(self, rollout: Rollout, indices: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logp, current = self.slot_scores(self.model, rollout.sample, indices)
        with torch.no_grad():
            _, reference = self.slot_scores(self.reference_model(), rollout.sample, indices)
        return logp, self.slot_kl(current, reference)
