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
share the std: KL = |mean - mean_ref|^2 / (2 std^2), averaged over the latent's elements (Flow-GRPO's KL).
Deterministic given the trajectory, so it has none of k3's sampling noise.

A slot's log-prob is the SUM over the frame's D elements (``summed``), the Gaussian's real log-likelihood, so
the ratio exp(logp - old) is the real importance ratio and the clip acts: as a mean over D = 2,592 latent
elements it never left [0.8, 1.28] and nothing clipped. Its gradient is the mean's, so the loss is the PPO
objective on the real likelihoods divided by D, the gradient scale the shipped lrs were tuned on; the
closed-form KL stays the mean, the real KL divided by D as well, so beta weighs it as before.

objective "flow_matching" (advantage-weighted flow matching, as AWM and DiffusionNFT decouple training from the
sampler): one slot per generated frame, scored at a noise level sigma ~ U(train_sigmas) and noise eps drawn
once at rollout time, the same for the G samples of a prompt (``shared_noise``; else per sample). The slot's
log-prob is the Gaussian (unit variance per element) log-likelihood of the flow-matching target under the
model's velocity at the noised generated frame:
    log p = -sum((v(x_sigma) - (eps - x0))^2) / 2,   x_sigma = (1 - sigma) x0 + sigma eps
(constants dropped; its gradient the mean's, see above), so the policy gradient A * grad log p is the
pretraining loss weighted by the advantage: it moves the whole predicted frame towards the samples that
scored, not only the one SDE step's mean. Its closed-form KL to the reference is mean((v - v_ref)^2) / 2 (k3
needs log-probs of samples the policy drew, which these are not: the config rejects it).
Bounded: for a negative advantage, -A log p = -|A| |v - target|^2 / 2 alone is concave and unbounded below (the
loss falls forever as v leaves the target, the KL at beta 0.01 cannot hold it), so this objective is always
taken through the clipped ratio against old log-probs scored before the updates (``Rollout.old_logp`` is None:
the trainer scores them). Then a negative slot's term is |A| max(ratio, 1 - eps_low) >= |A| (1 - eps_low), and
its gradient stops once half its summed squared error exceeds the old model's by -log(1 - eps_low); the config
rejects loss.old_logprobs: current, which takes the update's own, whenever a step makes more than one update
(with one, current is the same update as scoring them first, without the pass).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn

from rlir.kernels.flow_sde_step import SIGMA_MAX
from rlir.models.compiled import compile_mode
from rlir.models.flow_sampling import FlowSample, generate, teacher_forced_history, transition_logprobs
from rlir.models.generators import randn_rows

from .policy import ModelPolicy, Prompts, Rollout, after_context

# Euler ODE steps a frame when evaluating: enough that more steps no longer change the measured action-following
# (docs/experiments.md has the comparison).
EVAL_ODE_STEPS = 16
OBJECTIVES = ("sde_step", "flow_matching")


@dataclass
class MatchingSample:
    """A rollout for the flow-matching objective: the sampler's ``flow`` and, per row and generated frame, the
    noise level ``sigma`` [N, n] and noise ``noise`` [N, n, C, S, S] its slot is scored at."""

    flow: FlowSample
    sigma: torch.Tensor
    noise: torch.Tensor

    @property
    def frames(self) -> torch.Tensor:
        return self.flow.frames


def flow_matching_scores(model: nn.Module, sample: MatchingSample, index: Optional[torch.Tensor] = None):
    """(log p [N, n] fp32, velocity [N, n, C, S, S]) of each generated frame's flow-matching slot under the
    model's current weights (rows ``index``, default all), in one teacher-forced forward; differentiable."""
    rows = slice(None) if index is None else index
    x0, noise, sigma = sample.flow.frames[rows].float(), sample.noise[rows].float(), sample.sigma[rows]
    dtype = model.patch_in.weight.dtype
    clean, all_actions = teacher_forced_history(sample.flow, rows, dtype)
    n = x0.shape[1]
    n_ctx = sample.flow.context.shape[1]
    s = sigma[:, :, None, None, None]
    x_sigma = (1 - s) * x0 + s * noise
    v = model(x_sigma.to(dtype), sigma, all_actions, clean=clean, frame_index=list(range(n_ctx, n_ctx + n)))
    return summed(-half_mean_square(v.float() - (noise - x0)), x0[0, 0].numel()), v


def summed(mean_logp: torch.Tensor, elements: int) -> torch.Tensor:
    """Per-element mean log-probs -> their sum over ``elements`` in value, with the mean's gradient: the ratio of
    the real likelihoods (the clip acts on it) at the gradient scale of the mean (see the module doc)."""
    return mean_logp + (elements - 1) * mean_logp.detach()


def half_mean_square(diff: torch.Tensor) -> torch.Tensor:
    """mean(diff^2) / 2 over each frame's elements, [N, n, ...] -> [N, n] fp32: minus the log-density of a unit
    Gaussian (constants dropped), and the KL of two unit Gaussians whose means differ by ``diff``."""
    return 0.5 * diff.float().pow(2).flatten(2).mean(-1)


class DiffusionPolicy(ModelPolicy):
    """model: DiTWorldModel (trained); tokenizer: the VQ tokenizer for frame_space "tokenizer_latents" (None for
    pixels); num_steps, shift: the denoising schedule; noise_level: the SDE's a; stochastic: "all", a fraction,
    or a window (start, length) of the steps (see rlir.models.flow_sampling); eval_steps: the ODE steps a frame
    of the evaluation sampler; reference_factory: returns a model with the initial weights (called once, lazily,
    only for the KL term); compile: run each denoising step compiled (``rlir.models.flow_sampling.generate``'s
    ``compile``; CUDA graphs on CUDA); objective: what a log-prob slot scores, "sde_step" (each SDE step's
    transition) or "flow_matching" (each generated frame's flow-matching target at a noise level drawn from
    ``train_sigmas`` = (low, high)); see the module doc."""

    eval_sampler = "ode"

    def __init__(self, model: nn.Module, tokenizer: Optional[nn.Module] = None, *, num_steps: int = 8,
                 shift: float = 1.0, noise_level: float = 0.7, stochastic="all", sigma_max: float = SIGMA_MAX,
                 eval_steps: int = EVAL_ODE_STEPS, reference_factory: Optional[Callable[[], nn.Module]] = None,
                 compile=False, objective: str = "sde_step", train_sigmas=(0.5, 1.0), shared_noise: bool = True):
        super().__init__(model, reference_factory)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
        low, high = train_sigmas
        if not 0 <= low < high <= 1:
            raise ValueError(f"train_sigmas must be (low, high) with 0 <= low < high <= 1, got {train_sigmas!r}")
        self.objective, self.train_sigmas = objective, (float(low), float(high))
        self.shared_noise = shared_noise
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
        if self.objective == "flow_matching":
            return self._matching_rollout(prompts, num_samples, sample, generator)
        n_rows, n, ks = sample.log_probs.shape
        return Rollout(
            prompts=prompts,
            num_samples=num_samples,
            sample=sample,
            old_logp=summed(sample.log_probs.reshape(n_rows, n * ks).float(), sample.frames[0, 0].numel()),
            mask=torch.ones(n_rows, n * ks, dtype=torch.bool, device=sample.frames.device),
            actions=sample.actions,
            slot_frame=torch.arange(n, device=sample.frames.device).repeat_interleave(ks),
        )

    def _matching_rollout(self, prompts: Prompts, num_samples: int, flow: FlowSample, generator) -> Rollout:
        n_rows, n = flow.frames.shape[:2]
        device = flow.frames.device
        low, high = self.train_sigmas
        # With shared_noise, one draw per prompt, shared by its G samples: the noise terms of their flow-matching
        # gradients are then the same, and cancel in the advantage-weighted sum (the advantages of a group sum to
        # zero), so what is left compares the samples' frames. A uniform draw is the normal CDF of a normal one;
        # randn_rows draws row by row like the sampler.
        rows, repeat = (n_rows // num_samples, num_samples) if self.shared_noise else (n_rows, 1)
        uniform = torch.special.ndtr(randn_rows((rows, n), generator, device))
        noise = randn_rows((rows, *flow.frames.shape[1:]), generator, device)
        sample = MatchingSample(flow, (low + (high - low) * uniform).repeat_interleave(repeat, 0),
                                noise.repeat_interleave(repeat, 0))
        # Nothing is scored while sampling: the trainer scores the slots (loss.old_logprobs: rollout or
        # recompute) or skips the pass (current).
        return Rollout(prompts=prompts, num_samples=num_samples, sample=sample, old_logp=None,
                       mask=torch.ones(n_rows, n, dtype=torch.bool, device=device), actions=flow.actions,
                       slot_frame=torch.arange(n, device=device))

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
        if self.objective == "flow_matching":
            return flow_matching_scores(model, rollout.sample, indices)[0]
        scores = transition_logprobs(model, rollout.sample, indices)
        return summed(scores.log_probs.reshape(len(indices), -1), rollout.sample.frames[0, 0].numel())

    def logprobs_and_kl(self, rollout: Rollout, indices: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        sample = rollout.sample
        if self.objective == "flow_matching":
            logp, v = flow_matching_scores(self.model, sample, indices)
            with torch.no_grad():
                _, v_ref = flow_matching_scores(self.reference_model(), sample, indices)
            return logp, half_mean_square(v.float() - v_ref.float())
        current = transition_logprobs(self.model, sample, indices)
        with torch.no_grad():
            reference = transition_logprobs(self.reference_model(), sample, indices)
        sq = (current.means.float() - reference.means.float()).pow(2).flatten(3).mean(-1)
        kl = sq / (2 * current.stds.float().pow(2))
        logp = summed(current.log_probs.reshape(len(indices), -1), sample.frames[0, 0].numel())
        return logp, kl.reshape(len(indices), -1)
