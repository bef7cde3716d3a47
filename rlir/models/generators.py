"""Random streams per prompt group, so that what a prompt samples does not depend on how a batch is split.

A rollout of B prompts x G samples (row b*G + g is sample g of prompt b) can draw its randomness from one
``torch.Generator`` (the draws of prompt b then depend on the prompts before it in the batch) or from a
``GroupGenerators``: one generator per prompt, which draws the noise of that prompt's G rows, and a shared one
for the draws that apply to the whole batch (the DiT's random subset of stochastic steps). The samplers
(``rlir.models.sampling.generate``, ``rlir.models.flow_sampling.generate``) accept either.

The GRPO trainer seeds prompt b's generator from (seed, step, global prompt index b) and the shared one from
(seed, step): N data-parallel ranks, each holding B/N of the prompts, then sample exactly what one process
sampling all B prompts samples (``rlir.grpo.distributed``).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import numpy as np
import torch

# Stream tags: which of a step's random streams a seed is for.
ROLLOUT, SHARED, EVAL = 0, 1, 2


def derive_seed(*values: int) -> int:
    """A 63-bit seed mixed from non-negative ints by numpy's SeedSequence (nearby tuples give unrelated seeds)."""
    words = np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class GroupGenerators:
    """``groups[b]`` draws the noise of prompt b's rows; ``shared`` draws what the whole batch shares."""

    def __init__(self, groups: Sequence[torch.Generator], shared: torch.Generator):
        if len(groups) == 0:
            raise ValueError("GroupGenerators needs at least one group generator")
        self.groups: List[torch.Generator] = list(groups)
        self.shared = shared

    def __len__(self) -> int:
        return len(self.groups)

    @classmethod
    def seeded(cls, seed: int, step: int, prompt_indices: Sequence[int], device, stream: int = ROLLOUT):
        """One generator per global prompt index, seeded by (seed, stream, step, index), and the shared one
        by (seed, SHARED, step), all on ``device``."""
        device = torch.device(device)

        def make(*values):
            return torch.Generator(device).manual_seed(derive_seed(*values))

        return cls([make(seed, stream, step, int(i)) for i in prompt_indices], make(seed, SHARED, step))

    def rows(self, n_rows: int) -> int:
        """Rows per group of an [n_rows, ...] draw."""
        if n_rows % len(self.groups):
            raise ValueError(f"{n_rows} rows do not split into {len(self.groups)} prompt groups")
        return n_rows // len(self.groups)


Generators = Union[None, torch.Generator, GroupGenerators]


def check_generators(generator: Generators, prompts: int) -> None:
    if isinstance(generator, GroupGenerators) and len(generator) != prompts:
        raise ValueError(f"generator: {len(generator)} group generators for {prompts} prompts")
    if generator is not None and not isinstance(generator, (torch.Generator, GroupGenerators)):
        raise ValueError(f"generator must be a torch.Generator or GroupGenerators, got {type(generator).__name__}")


def shared_generator(generator: Generators) -> Optional[torch.Generator]:
    """The generator for a draw the whole batch shares."""
    return generator.shared if isinstance(generator, GroupGenerators) else generator


def randn_rows(shape, generator: Generators, device) -> torch.Tensor:
    """torch.randn(shape) whose rows (dim 0) are drawn group by group."""
    if not isinstance(generator, GroupGenerators):
        return torch.randn(shape, generator=generator, device=device)
    out = torch.empty(shape, device=device)
    for chunk, g in zip(out.split(generator.rows(out.shape[0])), generator.groups):
        chunk.normal_(generator=g)
    return out


def exponential_like(t: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Exp(1) samples shaped like ``t`` whose rows (dim 0) are drawn group by group."""
    out = torch.empty_like(t)
    if not isinstance(generator, GroupGenerators):
        return out.exponential_(1, generator=generator)
    for chunk, g in zip(out.split(generator.rows(out.shape[0])), generator.groups):
        chunk.exponential_(1, generator=g)
    return out
