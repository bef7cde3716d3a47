"""Flow-GRPO's objective (``loss.objective: sde_step``): a log-prob slot is one stochastic SDE step of one frame.

rollout: the SDE sample with its transitions recorded; the sampler's ``FlowSample`` is the rollout's ``sample``
as it is. S = n frames x Ks stochastic steps, slot (k, i) = frame k, stochastic step i; old_logp are the step
Gaussians' log-probs recorded while sampling (``summed``, see rlir.policies.diffusion).
logprobs: ``transition_logprobs``: the recorded transitions rescored under the current weights in one
teacher-forced forward (differentiable), equal to the recorded ones before the first update.
reference_logprobs: the same transitions under the initial weights, so loss.beta > 0 adds the k3 estimate of
KL(policy step || reference step) on the sampled x_next.
logprobs_and_kl (loss.kl: closed_form): the exact KL of each step Gaussian to the reference model's, which
share the std: KL = |mean - mean_ref|^2 / (2 std^2), averaged over the latent's elements (Flow-GRPO's KL).
Deterministic given the trajectory, so it has none of k3's sampling noise.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from rlir.models.flow_sampling import FlowSample, TransitionScores, transition_logprobs

from .diffusion import DiffusionPolicy, summed
from .rollout import Prompts, Rollout


class SDEStepPolicy(DiffusionPolicy):
    """``DiffusionPolicy`` whose slots are the SDE steps' Gaussian transitions; see the module doc."""

    @torch.no_grad()
    def rollout(self, prompts: Prompts, num_samples: int, generator: Optional[torch.Generator] = None) -> Rollout:
        prompts = prompts.to(self.device)
        sample = self.sample_sde(prompts, num_samples, generator)
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

    def slot_scores(self, model: nn.Module, sample: FlowSample,
                    indices: torch.Tensor) -> Tuple[torch.Tensor, TransitionScores]:
        scores = transition_logprobs(model, sample, indices)
        return summed(scores.log_probs.reshape(len(indices), -1), sample.frames[0, 0].numel()), scores

    def slot_kl(self, current: TransitionScores, reference: TransitionScores) -> torch.Tensor:
        sq = (current.means.float() - reference.means.float()).pow(2).flatten(3).mean(-1)
        kl = sq / (2 * current.stds.float().pow(2))
        return kl.reshape(kl.shape[0], -1)
