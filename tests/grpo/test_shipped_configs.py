"""Every config under configs/ loads, validates and matches the checkpoints it names."""
import pytest
import yaml

from rlir.grpo import config_from_dict
from rlir.grpo.builders import freeze_all_but

from .conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_is_valid(path):
    cfg = config_from_dict(yaml.safe_load(path.read_text()), check_paths=False)
    if cfg.models.source != "pretrained":
        return
    for name in ("world_model", "tokenizer", "idm", "eval_idm"):
        assert (REPO / getattr(cfg.models, name) / "config.json").is_file(), name
    if cfg.optim.trainable is not None:
        from rlir.models.loading import load_pretrained_world_model

        model = load_pretrained_world_model(REPO / cfg.models.world_model, "models.world_model")
        freeze_all_but(model, cfg.optim.trainable)  # raises if a pattern matches nothing
        assert 0 < sum(p.requires_grad for p in model.parameters()) < len(list(model.parameters()))
