"""Advantage-weighted flow matching (``loss.objective: flow_matching``, as AWM and DiffusionNFT decouple training
from the sampler): a log-prob slot is one generated frame.

rollout: the SDE sample's frames only (its trajectory is not recorded: nothing scores it), and per row and frame
a noise level sigma ~ U(train_sigmas) and noise eps, drawn once at rollout time, the same for the G samples of a
prompt (``shared_noise``; else per sample). The slot's log-prob is the Gaussian (unit variance per element)
log-likelihood of the flow-matching target under the model's velocity at the noised generated frame:
    log p = -sum((v(x_sigma) - (eps - x0))^2) / 2,   x_sigma = (1 - sigma) x0 + sigma eps
(constants dropped; its gradient the mean's, see rlir.policies.diffusion), so the policy gradient A * grad log p
is the pretraining loss weighted by the advantage: it moves the whole predicted frame towards the samples that
scored, not only the one SDE step's mean. Its closed-form KL to the reference is mean((v - v_ref)^2) / 2 (k3
needs log-probs of samples the policy drew, which these are not: the config rejects it).

Bounded: for a negative advantage, -A log p = -|A| |v - target|^2 / 2 alone is concave and unbounded below (the
loss falls forever as v leaves the target, the KL at beta 0.01 cannot hold it), so this objective is always
taken through the clipped ratio against old log-probs scored before the updates (``Rollout.old_logp`` is None:
the trainer scores them). Then a negative slot's term is |A| max(ratio, 1 - eps_low) >= |A| (1 - eps_low), and
its gradient stops once half its summed squared error exceeds the old model's by -log(1 - eps_low); the config
rejects loss.old_logprobs: current, which takes the update's own, whenever a step makes more than one update
(with one, current is the same update as scoring them first, without the pass).
That bounds the loss, not the gradient: where an earlier update of the step moved a negative slot's frame the
other way, its ratio (a sum over D elements) reaches thousands, and PPO's unclipped term weighs its gradient by
it. ``loss.delta`` (the dual clip) caps that weight at delta |A|; without it one slot can steer a whole update
(docs/experiments.md, "the importance ratio explodes").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

from rlir.models.flow_sampling import FlowSample, teacher_forced_history
from rlir.models.generators import randn_rows
from rlir.schema import ConfigError

from .diffusion import DiffusionPolicy, summed
from .rollout import Prompts, Rollout


def check_train_sigmas(train_sigmas: Sequence[float]) -> Tuple[float, float]:
    """(low, high) of the uniform noise levels a slot is scored at; a ConfigError (a ValueError) naming
    train_sigmas unless 0 <= low < high <= 1 (the config's check and the constructor's)."""
    if len(train_sigmas) != 2 or not 0 <= train_sigmas[0] < train_sigmas[1] <= 1:
        raise ConfigError("train_sigmas", f"must be [low, high] with 0 <= low < high <= 1, got {train_sigmas!r}")
    return float(train_sigmas[0]), float(train_sigmas[1])


@dataclass
class MatchingSample:
    """A rollout for the flow-matching objective: the sampler's ``flow`` (frames, no trajectory) and, per row and
    generated frame, the noise level ``sigma`` [N, n] and noise ``noise`` [N, n, C, S, S] its slot is scored at."""

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


def half_mean_square(diff: torch.Tensor) -> torch.Tensor:
    """mean(diff^2) / 2 over each frame's elements, [N, n, ...] -> [N, n] fp32: minus the log-density of a unit
    Gaussian (constants dropped), and the KL of two unit Gaussians whose means differ by ``diff``."""
    return 0.5 * diff.float().pow(2).flatten(2).mean(-1)


class FlowMatchingPolicy(DiffusionPolicy):
    """``DiffusionPolicy`` whose slots are the generated frames' flow-matching targets at a noise level drawn from
    ``train_sigmas`` = (low, high), shared by a prompt's samples with ``shared_noise``; see the module doc."""

    def __init__(self, model: nn.Module, tokenizer: Optional[nn.Module] = None, *, train_sigmas=(0.5, 1.0),
                 shared_noise: bool = True, **options):
        super().__init__(model, tokenizer, **options)
        self.train_sigmas = check_train_sigmas(train_sigmas)
        self.shared_noise = shared_noise

    @classmethod
    def from_config(cls, model: nn.Module, tokenizer: Optional[nn.Module], sampling, objective, **options):
        return super().from_config(model, tokenizer, sampling, objective, train_sigmas=tuple(objective.train_sigmas),
                                   shared_noise=sampling.sde.shared_noise, **options)

    @torch.no_grad()
    def rollout(self, prompts: Prompts, num_samples: int, generator: Optional[torch.Generator] = None) -> Rollout:
        prompts = prompts.to(self.device)
        flow = self.sample_sde(prompts, num_samples, generator, record_transitions=False)
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

    def slot_scores(self, model: nn.Module, sample: MatchingSample,
                    indices: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return flow_matching_scores(model, sample, indices)

    def slot_kl(self, current: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return half_mean_square(current.float() - reference.float())
