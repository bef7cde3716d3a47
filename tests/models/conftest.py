import pytest
import torch

from rlir.models import ARWorldModel

TINY = dict(codebook_size=32, tokens_per_frame=4, action_head_sizes=[5, 3], n_layers=2, d_model=64,
            n_heads=4, n_kv_heads=2, max_frames=6)


# The optional per-position inputs of ARWorldModel: none, the frame's action, and the action plus the previous
# frame's neighbourhood with row/column positions (TINY's 4 codes a frame as a 2 x 2 grid).
CONDITIONING = {
    "tokens_only": {},
    "frame_action": {"frame_action_embedding": True},
    "previous_frame": {"frame_action_embedding": True, "frame_grid": [2, 2], "previous_frame_input": True},
}


@pytest.fixture(params=list(CONDITIONING))
def conditioning(request) -> dict:
    return CONDITIONING[request.param]


@pytest.fixture
def make_model():
    def make(seed: int = 0, **overrides) -> ARWorldModel:
        torch.manual_seed(seed)
        return ARWorldModel(**{**TINY, **overrides}).eval()

    return make


@pytest.fixture
def random_clip():
    def clip(model: ARWorldModel, batch: int, frames: int, seed: int = 0):
        """Random codes [B, T, F] and actions [B, T-1, H] valid for ``model``."""
        g = torch.Generator().manual_seed(seed)
        cfg = model.config
        codes = torch.randint(0, cfg.codebook_size, (batch, frames, cfg.tokens_per_frame), generator=g)
        actions = torch.stack([torch.randint(0, n, (batch, frames - 1), generator=g) for n in model.head_sizes], -1)
        return codes, actions

    return clip
