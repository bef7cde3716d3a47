"""The frame-causal DiT world model (``DiTWorldModel``) as a GRPO ``Policy`` (Flow-GRPO-style).

rollout: encode the prompt's context frames to model space and run the SDE sampler
(``rlir.models.flow_sampling.generate``, sampler "sde"): G continuations per prompt sharing one cached
context pass. Every generated frame is denoised in ``num_steps`` steps; the ``stochastic`` ones are SDE steps
(``rlir.kernels.flow_sde_step``) whose Gaussian log-probs are the policy's log-prob slots:
S = n frames x Ks stochastic steps, slot (k, i) = frame k, stochastic step i. The sampler's ``FlowSample``
(trajectories, sigmas, which steps were stochastic) is the rollout's ``sample`` as it is.
decode: the generated frames back to uint8, after the last real context frame.
generate(..., sampler="ode" or "eval"): the deterministic ODE sampler (diffusers' FlowMatchEulerDiscreteScheduler,
``eval_steps`` Euler steps a frame, ``EVAL_ODE_STEPS`` by default), the documented evaluation sampler: it measures
the model, not the exploration noise GRPO adds.
logprobs: ``transition_logprobs``: the recorded transitions rescored under the current weights in one
teacher-forced forward (differentiable), equal to the recorded ones before the first update.
reference_logprobs: the same transitions under a frozen copy of the initial weights, so loss.beta > 0 adds
the k3 estimate of KL(policy step || reference step) on the sampled x_next.
logprobs_and_kl (loss.kl: closed_form): the exact KL of each step Gaussian to the reference model's, which
share the std: KL = |mean - mean_ref|^2 / (2 std^2), averaged over the latent's elements as the log-probs
are (Flow-GRPO's KL). Deterministic given the trajectory, so it has none of k3's sampling noise.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn

from rlir.kernels.flow_sde_step import SIGMA_MAX
from rlir.models.compiled import compile_mode
from rlir.models.flow_sampling import generate, transition_logprobs

from .policy import ModelPolicy, Prompts, Rollout, after_context

# Euler ODE steps a frame when evaluating: enough that more steps no longer change the measured action-following
# (docs/experiments.md has the comparison).
EVAL_ODE_STEPS = 16


class DiffusionPolicy(ModelPolicy):
    """model: DiTWorldModel (trained); tokenizer: the VQ tokenizer for frame_space "tokenizer_latents" (None for
    pixels); num_steps, shift: the denoising schedule; noise_level: the SDE's a; stochastic: "all", a fraction,
    or a window (start, length) of the steps (see rlir.models.flow_sampling); eval_steps: the ODE steps a frame
    of the evaluation sampler; reference_factory: returns a model with the initial weights (called once, lazily,
    only for the KL term); compile: run each denoising step compiled (``rlir.models.flow_sampling.generate``'s
    ``compile``; CUDA graphs on CUDA)."""

    eval_sampler = "ode"

    def __init__(self, model: nn.Module, tokenizer: Optional[nn.Module] = None, *, num_steps: int = 8,
                 shift: float = 1.0, noise_level: float = 0.7, stochastic="all", sigma_max: float = SIGMA_MAX,
                 eval_steps: int = EVAL_ODE_STEPS, reference_factory: Optional[Callable[[], nn.Module]] = None,
                 compile=False):
        super().__init__(model, reference_factory)
        compile_mode(compile)  # validates
        self.compile = compile
        self.tokenizer = tokenizer.eval().requires_grad_(False) if tokenizer is not None else None
        self.num_steps, self.shift, self.noise_level = num_steps, shift, noise_level
        self.stochastic, self.sigma_max, self.eval_steps = stochastic, sigma_max, eval_steps
        if noise_level <= 0:
            raise ValueError(f"noise_level must be > 0 for GRPO (at 0 the sampler is deterministic and has no "
                             f"log-probs), got {noise_level!r}")

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return self.model.encode_frames(frames.to(self.device), self.tokenizer)

    @torch.no_grad()
    def rollout(self, prompts: Prompts, num_samples: int, generator: Optional[torch.Generator] = None) -> Rollout:
        prompts = prompts.to(self.device)
        sample = generate(self.model, self.encode(prompts.context), prompts.actions,
                          context_actions=prompts.context_actions, num_samples=num_samples,
                          num_steps=self.num_steps, shift=self.shift, sampler="sde", noise_level=self.noise_level,
                          stochastic=self.stochastic, sigma_max=self.sigma_max, generator=generator,
                          compile=self.compile)
        n_rows, n, ks = sample.log_probs.shape
        return Rollout(
            prompts=prompts,
            num_samples=num_samples,
            sample=sample,
            old_logp=sample.log_probs.reshape(n_rows, n * ks).float(),
            mask=torch.ones(n_rows, n * ks, dtype=torch.bool, device=sample.frames.device),
            actions=sample.actions,
            slot_frame=torch.arange(n, device=sample.frames.device).repeat_interleave(ks),
        )

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
                          num_steps=self.eval_steps, shift=self.shift, sampler="ode", generator=generator,
                          compile=self.compile)
        frames = self.model.decode_frames(sample.frames, self.tokenizer)
        return after_context(prompts, num_samples, frames)

    def score(self, model: nn.Module, rollout: Rollout, indices: torch.Tensor) -> torch.Tensor:
        scores = transition_logprobs(model, rollout.sample, indices)
        return scores.log_probs.reshape(len(indices), -1)

    def logprobs_and_kl(self, rollout: Rollout, indices: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        sample = rollout.sample
        current = transition_logprobs(self.model, sample, indices)
        with torch.no_grad():
            reference = transition_logprobs(self.reference_model(), sample, indices)
        sq = (current.means.float() - reference.means.float()).pow(2).flatten(3).mean(-1)
        kl = sq / (2 * current.stds.float().pow(2))
        return current.log_probs.reshape(len(indices), -1), kl.reshape(len(indices), -1)
