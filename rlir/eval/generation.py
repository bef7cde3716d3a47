"""Held-out videos: the one path from evaluation prompts to generated videos, for training's in-run evaluation
(rlir.grpo.held_out) and for ``rlir eval`` (rlir.eval.evaluate).

Every video comes from ``Policy.generate(..., sampler="eval")``, the policy's evaluation sampler (the AR model
samples codes that the tokenizer decodes; the DiT integrates each frame with the ODE sampler,
``rlir.policies.EVAL_ODE_STEPS`` Euler steps). In a torchrun job each rank generates its contiguous share of the
prompts (``Parallel.shard``) with the generator its caller seeds for that share.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from rlir.models.generators import Generators
from rlir.parallel import Parallel
from rlir.policies import Policy, Prompts, evaluation_policy


@torch.no_grad()
def held_out_videos(policy: Policy, prompts: Prompts, generators: Callable[[int, int], Generators], *,
                    samples: int = 1, batch: Optional[int] = None,
                    parallel: Optional[Parallel] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(uint8 videos [k * samples, n + 1, 3, h, w], their commanded actions [k * samples, n, H]) of this rank's
    k prompts, rows prompt-major. ``generators(start, stop)`` is the generator of prompts start..stop-1;
    ``batch``: prompts per ``generate`` call, each drawing from that one generator in turn (None: all at once);
    ``parallel``: the job (default: the current one). A rank without prompts gets empty tensors."""
    parallel = parallel if parallel is not None else Parallel.current()
    start, stop = parallel.shard(len(prompts))
    if stop == start:  # more ranks than prompts: the shapes of one prompt's videos
        videos, actions = held_out_videos(policy, prompts.rows(0, 1), generators, samples=samples, parallel=Parallel())
        return videos[:0], actions[:0]
    mine, generator = prompts.rows(start, stop), generators(start, stop)
    size = batch or len(mine)
    videos = torch.cat([policy.generate(mine.rows(i, i + size), samples, sampler="eval", generator=generator)
                        for i in range(0, len(mine), size)])
    return videos, mine.actions.to(videos.device).repeat_interleave(samples, 0)


def generate_videos(world_model, tokenizer, first_frames: torch.Tensor, actions: torch.Tensor, *,
                    temperature: float = 1.0, top_k: Optional[int] = None, seed: int = 0,
                    batch: int = 64) -> torch.Tensor:
    """One process: uint8 first frames [K, 3, h, w] + actions [K, n, H] -> uint8 videos [K, n + 1, 3, h, w]
    (frame 0 the real first frame, 1..n generated) of a world model's evaluation sampler (the AR model samples at
    ``temperature``/``top_k``), drawn from one generator seeded with ``seed``."""
    policy = evaluation_policy(world_model, tokenizer, temperature=temperature, top_k=top_k)

    def one_generator(start: int, stop: int) -> torch.Generator:
        return torch.Generator(policy.device).manual_seed(seed)

    return held_out_videos(policy, Prompts(first_frames[:, None], actions), one_generator, batch=batch,
                           parallel=Parallel())[0]
