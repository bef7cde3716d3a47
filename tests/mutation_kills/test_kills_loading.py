"""rlir/models/loading.py on small saved models (docs/mutation.md): every refusal's key and message, a model that
loads in fp32 and, for a world model, in eval mode, whichever class the directory holds."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rlir.grpo import load_config
from rlir.grpo.builders import _random_models
from rlir.models.ar_world_model import ARWorldModel
from rlir.models.dit_world_model import DiTWorldModel
from rlir.models.idm import InverseDynamicsModel
from rlir.models.loading import WORLD_MODEL_CLASSES, load_pretrained_world_model, load_strict, saved_config
from rlir.schema import ConfigError


TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny_ar.yaml"


def small_models():
    """(AR world model, tokenizer, IDM) of the tiny config, built from its seed."""
    return _random_models(load_config(TINY))


def small_idm():
    return small_models()[2]


def saved(tmp_path, model, name="model"):
    model.save_pretrained(tmp_path / name)
    return tmp_path / name


def refusal(call, *args) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        call(*args)
    return info.value


def test_the_registry_names_both_world_models():
    assert WORLD_MODEL_CLASSES == {"ar": ARWorldModel, "diffusion": DiTWorldModel}


def test_a_saved_model_loads_in_fp32_with_its_weights(tmp_path):
    model = small_idm().to(torch.bfloat16)
    path = saved(tmp_path, model)
    loaded = load_strict(InverseDynamicsModel, path, "models.idm")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value.float() if value.is_floating_point() else value)
    assert saved_config(path, "models.idm")["_class_name"] == "InverseDynamicsModel"


def test_a_directory_without_config_json_is_refused_naming_the_key(tmp_path):
    error = refusal(saved_config, tmp_path, "--idm")
    assert error.key == "--idm"
    assert str(error).startswith(f"--idm: {tmp_path}: not a saved model directory ({tmp_path / 'config.json'}: ")
    (tmp_path / "config.json").write_text("{not json")
    assert "not a saved model directory" in str(refusal(saved_config, tmp_path, "--idm"))


def test_another_class_is_refused_naming_what_the_directory_holds(tmp_path):
    path = saved(tmp_path, small_idm())
    error = refusal(load_strict, ARWorldModel, path, "models.world_model")
    assert error.key == "models.world_model"
    assert error.message == f"{path / 'config.json'} holds a 'InverseDynamicsModel', not a ARWorldModel"


def test_a_directory_from_pretrained_cannot_read_is_refused_naming_the_key(tmp_path):
    path = saved(tmp_path, small_idm())
    (path / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    error = refusal(load_strict, InverseDynamicsModel, path, "models.eval_idm")
    assert error.key == "models.eval_idm"
    assert error.message.startswith(f"cannot load a InverseDynamicsModel from {path}: ")


def test_a_missing_weight_is_refused_with_a_count_and_examples(tmp_path):
    path = saved(tmp_path, small_idm())
    weights = path / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    gone = sorted(state)[:2]
    save_file({k: v for k, v in state.items() if k not in gone}, str(weights))
    error = refusal(load_strict, InverseDynamicsModel, path, "models.idm")
    assert error.key == "models.idm"
    assert error.message == (f"{weights} lacks 2 weights of the current InverseDynamicsModel (e.g. {gone}): saved by "
                             f"another version of the model code? retrain it")


def test_a_world_model_loads_as_the_class_its_directory_names_in_eval_mode(tmp_path):
    ar = small_models()[0]
    loaded = load_pretrained_world_model(saved(tmp_path, ar.train(), "ar"), "--world-model")
    assert type(loaded) is ARWorldModel and not loaded.training
    path = saved(tmp_path, small_idm(), "idm")
    error = refusal(load_pretrained_world_model, path, "--world-model")
    assert error.key == "--world-model"
    assert error.message == (f"{path / 'config.json'}: _class_name 'InverseDynamicsModel' is not a world model "
                             f"(['ARWorldModel', 'DiTWorldModel'])")


@pytest.mark.parametrize("load", [lambda path, key: load_strict(InverseDynamicsModel, path, key),
                                  load_pretrained_world_model], ids=["load_strict", "load_pretrained_world_model"])
def test_both_loaders_name_the_key_when_the_directory_holds_no_model(tmp_path, load):
    assert refusal(load, tmp_path, "--eval-idm").key == "--eval-idm"


def test_a_world_model_that_cannot_load_names_the_key(tmp_path):
    path = saved(tmp_path, small_models()[0])
    (path / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    assert refusal(load_pretrained_world_model, path, "models.world_model").key == "models.world_model"


def test_many_missing_weights_are_shown_by_three_examples(tmp_path):
    path = saved(tmp_path, small_idm())
    weights = path / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    gone = sorted(state)[:5]
    save_file({k: v for k, v in state.items() if k not in gone}, str(weights))
    error = refusal(load_strict, InverseDynamicsModel, path, "models.idm")
    assert f"lacks 5 weights of the current InverseDynamicsModel (e.g. {gone[:3]})" in error.message
