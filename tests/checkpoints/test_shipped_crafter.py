"""The pretrained Crafter checkpoints shipped in checkpoints/crafter load and work together."""
from pathlib import Path

import pytest
import torch

from rlir.models.ar_world_model import ARWorldModel
from rlir.models.idm import InverseDynamicsModel
from rlir.models.sampling import generate
from rlir.models.tokenizer import VQTokenizer

ROOT = Path(__file__).resolve().parents[2] / "checkpoints" / "crafter"
BUDGET_BYTES = 25 * 2**20


def test_total_size_within_budget():
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    assert 0 < total <= BUDGET_BYTES


@pytest.mark.parametrize("name", ["tokenizer", "idm", "eval_idm", "ar_world_model", "dit_world_model"])
def test_weights_are_safetensors_in_half_precision(name):
    from safetensors import safe_open

    with safe_open(str(ROOT / name / "diffusion_pytorch_model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes & {"BF16", "F16"}, dtypes


def test_models_load_and_compose():
    torch.manual_seed(0)
    tokenizer = VQTokenizer.from_pretrained(ROOT / "tokenizer")
    idm = InverseDynamicsModel.from_pretrained(ROOT / "idm").eval()
    world_model = ARWorldModel.from_pretrained(ROOT / "ar_world_model").eval()
    assert world_model.config.codebook_size == tokenizer.codebook_size
    assert world_model.config.tokens_per_frame == tokenizer.tokens_per_frame
    assert list(world_model.config.action_head_sizes) == list(idm.config.head_sizes) == [17]

    assert tokenizer.frame_size == (72, 72) and tokenizer.code_grid == (9, 9)  # one 8x8 code a Crafter tile
    assert world_model.config.frame_grid == [9, 9] and world_model.config.previous_frame_input
    frame = torch.randint(0, 256, (1, 3, 72, 72), dtype=torch.uint8)
    codes = tokenizer.encode(frame).reshape(1, -1)
    actions = torch.randint(0, 17, (1, 2, 1))
    tokens, logprobs = generate(world_model, codes, actions, num_samples=2, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (2, 2, 81) and torch.isfinite(logprobs).all() and (logprobs <= 0).all()
    frames = VQTokenizer.to_uint8(tokenizer.decode(tokens.reshape(2, 2, 9, 9)))
    video = torch.cat([frame.expand(2, 1, 3, 72, 72), frames], dim=1)
    logits = idm(video)
    assert len(logits) == 1 and logits[0].shape == (2, 2, 17)
