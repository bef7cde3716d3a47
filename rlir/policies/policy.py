"""The policy interface: any world model that samples videos with log-probs, for the GRPO trainer to optimise and
for evaluation and pretraining to generate with (``generate``).

The trainer only ever calls these methods, so an autoregressive token model (``ARPolicy``: one log-prob
per sampled code) and a diffusion/flow model (``DiffusionPolicy``: one slot per SDE step and frame, or one per
frame with the flow-matching objective) plug in the same way. Shapes, with B prompts, G samples each,
N = B * G rows (row b*G + g is sample g of prompt b), n generated frames, H action heads and S log-prob
slots per video (tokens for AR; stochastic steps x frames, or frames, for diffusion); ``Prompts`` and
``Rollout`` are in ``rlir.policies.rollout``:

    rollout(prompts, num_samples=G, generator) -> Rollout     no grad; the samples (the policy's own dataclass)
                                                              with old_logp [N, S] fp32 (or None) and mask [N, S]
    decode(rollout)            -> uint8 [N, n+1, 3, h, w]     the last (real) context frame + the n generated frames
    generate(prompts, G, sampler=None | "eval", generator)    rollout + decode: the one path from prompts to
                               -> uint8 [N, n+1, 3, h, w]     videos for training, evaluation and reports
    logprobs(rollout, idx)     -> fp32 [len(idx), S]          differentiable, under the current weights
    reference_logprobs(rollout, idx) -> fp32 [len(idx), S]    no grad, frozen initial weights (only if beta > 0)
    logprobs_and_kl(rollout, idx) -> (logp, kl) fp32 [len(idx), S] each, both differentiable: optional, the
                               exact per-slot KL to the reference model (only for loss.kl: closed_form)
    trainable_parameters()     -> the parameters the optimizer updates
    state_dict() / load_state_dict(sd)                        what a checkpoint saves (tensors only)

``logprobs`` must score the *same* samples the rollout drew, at the same slots, with the same sampling
distribution (temperature), so that the ratio exp(logprobs - old_logp) is 1 before the first update.

What a rollout sampled is the policy's own dataclass, ``Rollout.sample``, row-aligned with the rollout; the
trainer never looks inside it, only the policy's decode and logprobs do (``ARSample`` for the AR policy, the
DiT sampler's ``FlowSample`` for the SDE-step objective, ``MatchingSample`` for the flow-matching one).

The trainer passes ``rollout`` a ``rlir.models.generators.GroupGenerators``: ``generator.groups[b]`` draws the
noise of prompt b's G rows and ``generator.shared`` anything the batch shares, so a prompt's samples do not depend
on the rest of its batch or on the number of processes. A policy that draws from one ``torch.Generator`` can use
``generator.shared`` (its samples then depend on the batch composition).

Worked example (``Policy``, ``Rollout`` and ``to_uint8`` from ``rlir.policies``): a user's own frame-level world
model, ``MyModel.sample(context, actions, generator) -> (frames float [N, n, 3, h, w] in [0, 1], logp [N, n])``
and ``MyModel.score(context, actions, frames) -> logp [N, n]`` (e.g. a per-frame Gaussian)::

    @dataclass
    class MySample:
        context: torch.Tensor   # uint8 [N, C, 3, h, w]
        frames: torch.Tensor    # float [N, n, 3, h, w]

    class MyPolicy(Policy):
        def __init__(self, model):
            self.model = model

        def rollout(self, prompts, num_samples, generator):
            ctx = prompts.context.repeat_interleave(num_samples, 0)          # row b*G + g: sample g of prompt b
            act = prompts.actions.repeat_interleave(num_samples, 0)          # [N, n, H]
            frames, logp = self.model.sample(ctx, act, generator)
            return Rollout(prompts, num_samples, MySample(ctx, frames), old_logp=logp.float(),
                           mask=torch.ones_like(logp, dtype=torch.bool), actions=act,
                           slot_frame=torch.arange(logp.shape[1]))          # slot k is frame k

        def decode(self, rollout):
            s = rollout.sample
            return torch.cat([s.context[:, -1:], to_uint8(s.frames)], dim=1)

        def logprobs(self, rollout, idx):
            s = rollout.sample
            return self.model.score(s.context[idx], rollout.actions[idx], s.frames[idx]).float()

        def trainable_parameters(self):
            return list(self.model.parameters())

        def state_dict(self):
            return self.model.state_dict()

        def load_state_dict(self, sd):
            self.model.load_state_dict(sd)

    trainer = GRPOTrainer(cfg, MyPolicy(model), idm=my_idm, prompts=my_prompt_sampler)   # rlir.grpo
    trainer.train()
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Dict, Iterable, Optional, Tuple

import torch

from .rollout import Prompts, Rollout


class Policy(ABC):
    """What the GRPO trainer needs from a world model; see the module docstring."""

    # The sampler evaluations use (``generate(..., sampler="eval")``): None is the policy's own, the one
    # training samples from; a policy with a better sampler for measuring names it (the DiT: "ode").
    eval_sampler: Optional[str] = None

    @torch.no_grad()
    def generate(self, prompts: Prompts, num_samples: int = 1, *, sampler: Optional[str] = None,
                 generator: Optional[torch.Generator] = None, return_rollout: bool = False):
        """uint8 videos [N, n+1, 3, h, w] (the last real context frame, then n generated frames) of G =
        ``num_samples`` samples of each prompt; with ``return_rollout``, (videos, rollout). ``sampler``: None
        samples from the policy itself (what training optimises); "eval" is the documented evaluation sampler
        (``eval_sampler``); a policy may name others."""
        if sampler == "eval":
            sampler = self.eval_sampler
        if sampler is not None:
            raise ValueError(f"sampler: {type(self).__name__} has no sampler {sampler!r}")
        rollout = self.rollout(prompts, num_samples, generator)
        videos = self.decode(rollout)
        return (videos, rollout) if return_rollout else videos

    @abstractmethod
    def rollout(self, prompts: Prompts, num_samples: int, generator: Optional[torch.Generator] = None) -> Rollout:
        ...

    @abstractmethod
    def decode(self, rollout: Rollout) -> torch.Tensor:
        ...

    @abstractmethod
    def logprobs(self, rollout: Rollout, indices: torch.Tensor) -> torch.Tensor:
        ...

    def reference_logprobs(self, rollout: Rollout, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no reference model: set loss.beta: 0")

    def logprobs_and_kl(self, rollout: Rollout, indices: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has no closed-form KL: set loss.kl: k3")

    @abstractmethod
    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        ...

    @abstractmethod
    def state_dict(self) -> Dict[str, torch.Tensor]:
        ...

    @abstractmethod
    def load_state_dict(self, state_dict: Dict[str, torch.Tensor]) -> None:
        ...

    def train(self, mode: bool = True) -> "Policy":
        """Switch the trainable modules to training (True) or inference (False) mode."""
        return self

    def eval(self) -> "Policy":
        return self.train(False)


class ModelPolicy(Policy):
    """A Policy around one trainable ``nn.Module`` (``self.model``) with a lazily built frozen reference copy:
    subclasses implement rollout, decode and ``score(model, rollout, indices)``, the log-probs of the rollout's
    samples under ``model``; logprobs and reference_logprobs are score under the two models."""

    def __init__(self, model: torch.nn.Module, reference_factory=None):
        self.model = model
        self.reference_factory = reference_factory
        self._reference: Optional[torch.nn.Module] = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @abstractmethod
    def score(self, model: torch.nn.Module, rollout: Rollout, indices: torch.Tensor) -> torch.Tensor:
        ...

    def logprobs(self, rollout: Rollout, indices: torch.Tensor) -> torch.Tensor:
        return self.score(self.model, rollout, indices)

    @torch.no_grad()
    def reference_logprobs(self, rollout: Rollout, indices: torch.Tensor) -> torch.Tensor:
        return self.score(self.reference_model(), rollout, indices)

    def reference_model(self) -> torch.nn.Module:
        if self._reference is None:
            if self.reference_factory is None:
                raise RuntimeError(f"{type(self).__name__} has no reference_factory: the KL term (loss.beta > 0) "
                                   f"needs the initial weights")
            self._reference = self.reference_factory().to(self.device).eval().requires_grad_(False)
        return self._reference

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state_dict: Dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict)

    def train(self, mode: bool = True) -> "ModelPolicy":
        self.model.train(mode)
        return self
