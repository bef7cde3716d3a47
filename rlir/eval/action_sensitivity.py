"""Does an AR world model use its actions? Teacher-forced held-out NLL under the true actions against the same
clips with the actions shuffled across clips, all set to one class, or with left/right and up/down swapped.
A model that ignores its actions scores the same under all of them."""
from __future__ import annotations

from typing import Dict

import torch

from rlir.models.ar_world_model import ARWorldModel
from rlir.models.tokenizer import VQTokenizer


def _swap_directions(actions: torch.Tensor, classes) -> torch.Tensor:
    """Crafter-style move_left <-> move_right and move_up <-> move_down (a no-op where the names are absent)."""
    out = actions.clone()
    for a, b in (("move_left", "move_right"), ("move_up", "move_down")):
        if a in classes and b in classes:
            ia, ib = classes.index(a), classes.index(b)
            out[actions == ia], out[actions == ib] = ib, ia
    return out


@torch.no_grad()
def action_sensitivity(world_model: ARWorldModel, tokenizer: VQTokenizer, real: torch.Tensor,
                       actions: torch.Tensor, classes, seed: int = 0) -> Dict[str, float]:
    """real: uint8 videos [K, n + 1, 3, S, S]; actions [K, n, 1] (one head: the Crafter layout).
    -> NLL per code (nats) of frames 1..n under each variant of the actions."""
    if not isinstance(world_model, ARWorldModel):
        raise ValueError(f"action sensitivity needs an ARWorldModel (teacher-forced NLL), got {type(world_model).__name__}")
    codes = tokenizer.encode(real).flatten(2).long()
    actions = actions.long()
    order = torch.randperm(len(actions), generator=torch.Generator().manual_seed(seed))
    variants = {"true": actions, "shuffled": actions[order], "all_class_0": torch.zeros_like(actions),
                "directions_swapped": _swap_directions(actions, list(classes))}
    return {name: -world_model.token_logprobs(codes, a, n_context=1).mean().item() for name, a in variants.items()}
