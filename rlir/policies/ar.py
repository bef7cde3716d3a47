"""The autoregressive token world model (``ARWorldModel`` + ``VQTokenizer``) as a GRPO ``Policy``.

rollout: encode the prompt's context frames to codes, ``generate`` G continuations per prompt (one shared
prefill per prompt, log-probs recorded under softmax(logits / temperature)); one log-prob slot per
generated code, S = n * tokens_per_frame, all valid.
decode: the generated codes -> tokenizer.decode -> uint8, after the last real context frame (what the IDM
reads in training and in every evaluation alike).
logprobs: ``model.token_logprobs`` teacher-forced on [context codes, sampled codes] (differentiable).
Under autocast (bf16 on CUDA) the rollout runs on a copy of the model cast to bf16, refreshed from the
trained fp32 weights every rollout, so the trainer recomputes the old log-probs then (loss.old_logprobs).
reference_logprobs: the same under a frozen copy of the initial weights, built on first use by
``reference_factory`` (never built when beta = 0).
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn

from rlir.models.compiled import compile_mode
from rlir.models.sampling import generate
from rlir.models.tokenizer import VQTokenizer

from .policy import ModelPolicy
from .rollout import Prompts, Rollout, after_context


to_uint8 = VQTokenizer.to_uint8  # float frames in [0, 1] -> uint8; policy.py's worked example uses it


@dataclass
class ARSample:
    """What ``ARPolicy.rollout`` sampled (``Rollout.sample``), N rows: context_tokens int64 [N, C, F] (the
    prompt's codes), tokens int64 [N, n, F] (the generated codes), all_actions int64 [N, C - 1 + n, H] (the
    actions between all frames, as the model reads them)."""

    context_tokens: torch.Tensor
    tokens: torch.Tensor
    all_actions: torch.Tensor


def check_codes_fit(model: nn.Module, tokenizer: nn.Module) -> None:
    """The tokenizer's codes are the world model's: as many per frame, from a codebook of the same size (a
    tokenizer that does not say is taken at its word)."""
    f = model.config.tokens_per_frame
    grid = getattr(tokenizer, "code_grid", None)
    if grid is not None and grid[0] * grid[1] != f:
        raise ValueError(f"tokenizer code grid {tuple(grid)} has {grid[0] * grid[1]} codes, the world model "
                         f"expects tokens_per_frame={f}")
    size = getattr(tokenizer, "codebook_size", None)
    if size is not None and size != model.config.codebook_size:
        raise ValueError(f"tokenizer codebook_size {size} != world model codebook_size {model.config.codebook_size}")


class ARPolicy(ModelPolicy):
    """model: ARWorldModel (trained); tokenizer: frames <-> codes (``encode(uint8 [..., 3, s, s]) -> [..., g, g]``,
    ``decode(codes [..., g, g]) -> float [..., 3, s, s]`` in [0, 1]), frozen; temperature, top_k: the sampler
    (``rlir.models.sampling``; top_k to evaluate, since training scores the whole distribution); reference_factory:
    returns a model with the initial weights (called once, lazily; needed only for the KL term); compile: run the
    decode step compiled (``rlir.models.sampling.generate``'s ``compile``; CUDA graphs on CUDA)."""

    def __init__(self, model: nn.Module, tokenizer: nn.Module, *, temperature: float = 1.0,
                 top_k: Optional[int] = None, reference_factory: Optional[Callable[[], nn.Module]] = None,
                 compile=False):
        super().__init__(model, reference_factory)
        compile_mode(compile)  # validates
        self.compile = compile
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.temperature, self.top_k = float(temperature), top_k
        self._rollout_copy: Optional[nn.Module] = None
        if top_k is not None:
            warnings.warn("top_k makes the sampler differ from the policy being optimised: tokens come from the "
                          "truncated distribution while old and new log-probs are under the full softmax, so "
                          "GRPO's importance ratios are off-policy-biased (top_k is for evaluating)", stacklevel=2)
        check_codes_fit(model, tokenizer)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames [B, T, 3, s, s] -> codes int64 [B, T, F]."""
        codes = self.tokenizer.encode(frames.to(self.device))
        return codes.reshape(*frames.shape[:2], -1).long()

    @torch.no_grad()
    def rollout(self, prompts: Prompts, num_samples: int, generator: Optional[torch.Generator] = None) -> Rollout:
        prompts = prompts.to(self.device)
        g = num_samples
        ctx = self.encode(prompts.context)  # [B, C, F]
        tokens, logp = generate(self._rollout_model(), ctx, prompts.actions, context_actions=prompts.context_actions,
                                num_samples=g, temperature=self.temperature, top_k=self.top_k,
                                generator=generator, compile=self.compile)
        n_rows, n, f = tokens.shape
        actions = prompts.actions.long().repeat_interleave(g, 0)
        all_actions = actions if prompts.context_actions is None else torch.cat(
            (prompts.context_actions.long().repeat_interleave(g, 0), actions), dim=1)
        return Rollout(
            prompts=prompts,
            num_samples=g,
            sample=ARSample(ctx.repeat_interleave(g, 0), tokens, all_actions),
            old_logp=logp.reshape(n_rows, n * f).float(),
            mask=torch.ones(n_rows, n * f, dtype=torch.bool, device=tokens.device),
            actions=actions,
            slot_frame=torch.arange(n * f, device=tokens.device) // f,
        )

    def _rollout_model(self) -> nn.Module:
        """The model itself, or under autocast a copy cast to the autocast dtype (refreshed every call): the
        static KV cache is allocated in the model's dtype and attention needs q, k, v in one dtype."""
        kind = self.device.type
        if not torch.is_autocast_enabled(kind):
            return self.model
        dtype = torch.get_autocast_dtype(kind)
        if dtype == self.model.dtype:
            return self.model
        if self._rollout_copy is None or self._rollout_copy.dtype != dtype:
            self._rollout_copy = copy.deepcopy(self.model).to(dtype).eval().requires_grad_(False)
        else:
            for dst, src in zip(self._rollout_copy.state_dict().values(), self.model.state_dict().values()):
                dst.copy_(src)
        return self._rollout_copy

    @torch.no_grad()
    def decode(self, rollout: Rollout) -> torch.Tensor:
        codes = rollout.sample.tokens  # [N, n, F]
        # Only decode() and code_grid are asked of the tokenizer, so user tokenizers need nothing more.
        frames = to_uint8(self.tokenizer.decode(codes.reshape(*codes.shape[:2], *self.tokenizer.code_grid)))
        return after_context(rollout.prompts, rollout.num_samples, frames)

    def score(self, model: nn.Module, rollout: Rollout, indices: torch.Tensor) -> torch.Tensor:
        s = rollout.sample
        ctx = s.context_tokens[indices]
        frames = torch.cat((ctx, s.tokens[indices]), dim=1)
        logp = model.token_logprobs(frames, s.all_actions[indices], temperature=self.temperature,
                                    n_context=ctx.shape[1])
        return logp.reshape(len(indices), -1)
