"""What a generated frame is credited with under ``advantage.credit`` (frame or reward_to_go)."""
from __future__ import annotations

import torch


def frame_credit(frame_match: torch.Tensor, credit: str) -> torch.Tensor:
    """Per-frame values [N, n] to normalise within each group: ``frame`` the frame's own IDM match; ``reward_to_go``
    the matches of that frame and every later one, since frame k conditions frames k+1.. of its video."""
    values = frame_match.float()
    if credit == "reward_to_go":
        return values.flip(-1).cumsum(-1).flip(-1)
    return values
