"""Kill tests for rlir/grpo/trained_world_model.py (docs/mutation.md): a GRPO run's world model loaded and
exported from checkpoints written by hand (save_checkpoint), for a run that started from a save_pretrained model
and one that started from `seed` (models.source: random); the refusals with their exact messages."""
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlir.grpo import checkpoint as ckpt
from rlir.grpo.builders import initial_world_model
from rlir.grpo.config import config_from_dict
from rlir.grpo.trained_world_model import (CheckpointError, checkpoint_world_model, export_world_model,
                                           find_checkpoint, load_world_model, run_base_world_model)
from rlir.models.ar_world_model import ARWorldModel
from rlir.schema import ConfigError, read_yaml

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny_ar.yaml"


def _random_config() -> dict:
    """The tiny AR run's config, its data a recording that is no longer there (exporting does not need it)."""
    data = read_yaml(TINY)
    data["data"] = {"source": "recording", "path": "/nonexistent/recording", "context_frames": 1}
    return data


def _trained(model) -> dict:
    """``model``'s weights moved, as training would."""
    g = torch.Generator().manual_seed(1)
    return {k: v + torch.randn(v.shape, generator=g).to(v.dtype) if v.is_floating_point() else v
            for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    base_model = initial_world_model(config_from_dict(read_yaml(TINY)))
    base = root / "base"
    base_model.save_pretrained(str(base))
    trained = _trained(base_model)
    pretrained_run = root / "pretrained_run"
    ckpt.save_checkpoint(pretrained_run / "checkpoints", 2, _trained(base_model), {},
                         meta={"config": {"models": {"world_model": str(base)}}})
    ckpt.save_checkpoint(pretrained_run / "checkpoints", 5, trained, {},
                         meta={"config": {"models": {"world_model": str(base)}}})
    random_run = root / "random_run"
    ckpt.save_checkpoint(random_run / "checkpoints", 3, trained, {}, meta={"config": _random_config()})
    return {"base": base, "trained": trained, "pretrained": pretrained_run, "random": random_run}


def _assert_weights(model, expected):
    assert not model.training
    state = model.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert state[key].dtype == torch.float32 and torch.equal(state[key], value.float()), key


def test_a_run_started_from_a_saved_model_loads_its_latest_checkpoint(runs):
    model, info = load_world_model(runs["pretrained"], "--world-model")
    assert isinstance(model, ARWorldModel)
    _assert_weights(model, runs["trained"])
    step = runs["pretrained"] / "checkpoints" / "step_00000005"
    assert info == {"source": str(step), "base": str(runs["base"]), "step": 5}
    assert run_base_world_model(runs["pretrained"]) == str(runs["base"])
    assert run_base_world_model(step) == str(runs["base"])


def test_a_random_run_is_rebuilt_from_its_seed_without_its_data(runs):
    step = runs["random"] / "checkpoints" / "step_00000003"
    assert find_checkpoint(step) == step and find_checkpoint(runs["random"]) == step
    model, meta = checkpoint_world_model(step)
    _assert_weights(model, runs["trained"])
    assert meta["step"] == 3 and meta["config"]["data"]["path"] == "/nonexistent/recording"
    model, info = load_world_model(step, "--world-model")
    _assert_weights(model, runs["trained"])
    assert info == {"source": str(step), "base": None, "step": 3}


def test_a_save_pretrained_directory_is_loaded_as_itself(runs, tmp_path):
    model, info = load_world_model(runs["base"], "--world-model")
    assert isinstance(model, ARWorldModel) and not model.training
    assert info == {"source": str(runs["base"]), "base": str(runs["base"]), "step": 0}
    assert find_checkpoint(runs["base"]) is None and run_base_world_model(runs["base"]) is None
    with pytest.raises(ConfigError) as error:
        load_world_model(tmp_path / "missing", "--world-model")
    assert error.value.key == "--world-model"


def test_a_checkpoint_whose_saved_model_is_gone_names_models_world_model(runs, tmp_path):
    ckpt.save_checkpoint(tmp_path / "checkpoints", 1, runs["trained"], {},
                         meta={"config": {"models": {"world_model": str(tmp_path / "gone")}}})
    with pytest.raises(ConfigError) as error:
        load_world_model(tmp_path, "--world-model")
    assert error.value.key == "models.world_model" and str(tmp_path / "gone") in error.value.message


def test_refusals_name_the_path(runs, tmp_path):
    step = ckpt.save_checkpoint(tmp_path / "run" / "checkpoints", 1, runs["trained"], {})
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(step))}/meta.json holds no run config$"):
        load_world_model(step, "--world-model")
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=rf"^{re.escape(str(tmp_path / 'empty'))}: a GRPO run without a "
                       r"complete checkpoint$"):
        find_checkpoint(tmp_path / "empty")
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(tmp_path / 'nothing'))}: neither a checkpoint "
                       r"\(no meta.json\) nor a GRPO run \(no checkpoints/\)$"):
        export_world_model(tmp_path / "nothing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_writes_fp32_by_default_into_new_or_existing_directories(runs, tmp_path):
    out = tmp_path / "a" / "b" / "model"
    info = export_world_model(runs["pretrained"], out)
    step = runs["pretrained"] / "checkpoints" / "step_00000005"
    assert info == {"class": "ARWorldModel", "checkpoint": str(step), "step": 5}
    saved = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    assert set(saved) == set(runs["trained"])
    for key, value in runs["trained"].items():
        assert saved[key].dtype == torch.float32 and torch.equal(saved[key], value.float()), key
    assert json.loads((out / "config.json").read_text())["_class_name"] == "ARWorldModel"
    # again into the directory that now exists, in fp32 as named
    assert export_world_model(runs["pretrained"], out, dtype="fp32") == info
    assert load_file(str(out / "diffusion_pytorch_model.safetensors"))[next(iter(saved))].dtype == torch.float32


def test_export_in_bf16_rounds_the_weights(runs, tmp_path):
    info = export_world_model(runs["random"], tmp_path / "model", dtype="bf16")
    assert info["step"] == 3 and info["class"] == "ARWorldModel"
    saved = load_file(str(tmp_path / "model" / "diffusion_pytorch_model.safetensors"))
    for key, value in runs["trained"].items():
        if value.is_floating_point():
            assert saved[key].dtype == torch.bfloat16 and torch.equal(saved[key], value.to(torch.bfloat16)), key
