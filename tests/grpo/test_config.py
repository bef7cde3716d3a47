"""A bad config fails before any work, naming the key."""
import pytest

from rlir.cli import main
from rlir.grpo import ConfigError, config_from_dict, load_config
from rlir.grpo import trainer as trainer_module
from rlir.grpo.config import REMOVED_KEYS

from .conftest import TINY_CONFIG, config_keys


@pytest.mark.parametrize("overrides, key", [
    (["optim.lrr=1e-3"], "optim.lrr"),
    (["nonsense.x=1"], "nonsense"),
    (["optim.lr=-1"], "optim.lr"),
    (["optim.lr=fast"], "optim.lr"),
    (["rollout.group_size=1"], "rollout.group_size"),
    (["rollout.group_size=2.5"], "rollout.group_size"),
    (["loss.loss_agg=mean"], "loss.loss_agg"),
    (["loss.delta=0.5"], "loss.delta"),
    (["train.bf16=maybe"], "train.bf16"),
    (["train.micro_batch_size=3"], "train.micro_batch_size"),
    (["rollout.n_frames=9"], "rollout.n_frames"),
    (["models.random.world_model.n_layerz=2"], "models.random.world_model.n_layerz"),
    (["models.random.world_model.codebook_size=8"], "models.random.world_model.codebook_size"),
    (["models.source=pretrained"], "models.world_model"),
    (["data.source=recording", "data.path=/nonexistent"], "data.path"),
    (["device=tpu"], "device"),
    (["optim.betas=[0.9]"], "optim.betas"),
    (["optim.betas=[0.9,1.0]"], "optim.betas[1]"),
    (["train"], "train"),
    (["optim.lr=true"], "optim.lr"),
    (["optim.lr=.inf"], "optim.lr"),
    (["optim.trainable=['(']"], "optim.trainable[0]"),
    (["rollout.sde.stochastic=window", "rollout.sde.window=[9,1]"], "rollout.sde.window"),
    (["models.random.action_head_sizes=[5,1]"], "models.random.action_head_sizes[1]"),
    (["models.random.tokenizer.patch_size=5"], "models.random.image_size"),
    (["loss.beta=0.1", "loss.kl=closed_form"], "loss.kl"),
    (["train.bf16=true"], "train.bf16"),
    (["rollout.temperature=0"], "rollout.temperature"),
    (["parallel.strategy=zero3"], "parallel.strategy"),
    (["models=[1]"], "models"),
])
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        load_config(TINY_CONFIG, overrides)
    assert str(info.value).startswith(key + ":"), str(info.value)
    assert info.value.key == key


def test_good_overrides_and_yaml_floats():
    cfg = load_config(TINY_CONFIG, ["optim.lr=1e-5", "loss.delta=null", "optim.betas=[0.9,0.95]", "train.bf16=false"])
    assert cfg.optim.lr == 1e-5 and cfg.loss.delta is None and cfg.optim.betas == [0.9, 0.95]
    assert cfg.train.bf16 == "false"
    assert config_from_dict({"optim": {"lr": "2e-5"}, "models": {"source": "random"},
                             "data": {"source": "synthetic"}}).optim.lr == 2e-5


def test_errors_are_one_line_starting_with_the_key():
    with pytest.raises(ConfigError) as info:
        load_config(TINY_CONFIG, ["optim.lrr=1e-3"])
    assert str(info.value) == ("optim.lrr: unknown key (known: lr, schedule, warmup_steps, min_lr_ratio, weight_decay, "
                               "betas, adam_eps, max_grad_norm, trainable)")
    with pytest.raises(ConfigError) as info:
        load_config(TINY_CONFIG, ["loss.loss_agg=mean"])
    assert str(info.value) == ("loss.loss_agg: must be one of ['token-mean', 'seq-mean-token-mean', 'seq-sum-norm'], "
                               "got 'mean'")
    with pytest.raises(ConfigError) as info:
        load_config(TINY_CONFIG, ["data.heldout_fraction=1"])
    assert str(info.value) == "data.heldout_fraction: must be in [0, 1), got 1"


def test_help_config_is_generated_from_the_schema(capsys):
    from rlir.grpo.config import GRPOConfig

    with pytest.raises(SystemExit) as info:
        main(["train", "--help-config"])  # no --config needed, as for --help
    assert info.value.code == 0
    text = capsys.readouterr().out

    keys = list(config_keys(GRPOConfig))
    assert len(keys) > 60 and "parallel.strategy" in keys
    for key in keys:
        assert f"\n  {key}: " in "\n" + text, key
    assert "  optim.lr: number > 0.0 = 1.0e-05" in text
    assert "  loss.loss_agg: token-mean|seq-mean-token-mean|seq-sum-norm = token-mean" in text
    assert "  optim.betas: list (2 items) of number >= 0.0, < 1.0 = [0.9, 0.999]" in text


def test_cli_fails_before_any_work(monkeypatch, tmp_path, capsys):
    def forbidden(*args, **kwargs):
        raise AssertionError("work started despite a bad config")

    monkeypatch.setattr(trainer_module.GRPOTrainer, "from_config", forbidden)
    code = main(["train", "--config", str(TINY_CONFIG), "--out", str(tmp_path / "run"), "loss.eps_hgh=0.3"])
    assert code == 2
    assert "loss.eps_hgh: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_checkpoint_missing_weights_fails_naming_the_key(tmp_path):
    """diffusers would silently re-initialise weights a checkpoint lacks; the builder refuses."""
    import torch
    from safetensors.torch import load_file, save_file

    from rlir.grpo.builders import build_models
    from rlir.grpo.builders import _random_models

    cfg = load_config(TINY_CONFIG)
    world_model, tokenizer, idm = _random_models(cfg)
    for name, model in (("wm", world_model), ("tok", tokenizer), ("idm", idm)):
        model.save_pretrained(tmp_path / name)
    weights = tmp_path / "idm" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state.pop(sorted(state)[0])
    save_file(state, str(weights))
    pretrained = load_config(TINY_CONFIG, ["models.source=pretrained", f"models.world_model={tmp_path / 'wm'}",
                                           f"models.tokenizer={tmp_path / 'tok'}", f"models.idm={tmp_path / 'idm'}"])
    with pytest.raises(ConfigError) as info:
        build_models(pretrained, torch.device("cpu"))
    assert info.value.key == "models.idm" and "lacks 1 weights" in str(info.value)


TINY_DIFFUSION = TINY_CONFIG.parent / "tiny_diffusion.yaml"
FLOW_MATCHING = "loss.objective=flow_matching"


@pytest.mark.parametrize("overrides, key", [
    ([FLOW_MATCHING, "loss.beta=0.1", "loss.kl=k3"], "loss.kl"),  # a flow-matching slot is no sampled log-prob
    ([FLOW_MATCHING, "loss.beta=0", "loss.old_logprobs=current"], "loss.old_logprobs"),  # 4 updates a step
])
def test_diffusion_flow_matching_rejects_what_means_nothing_or_is_unbounded(overrides, key):
    with pytest.raises(ConfigError) as info:
        load_config(TINY_DIFFUSION, overrides)
    assert str(info.value).startswith(key + ":") and "\n" not in str(info.value), str(info.value)


def test_diffusion_flow_matching_accepts_the_meaningful_combinations():
    load_config(TINY_DIFFUSION, [FLOW_MATCHING, "loss.beta=0.1", "loss.kl=closed_form"])
    load_config(TINY_DIFFUSION, [FLOW_MATCHING, "loss.beta=0"])  # k3 is the default, unused without a KL
    one_update = ["train.inner_epochs=1", "train.micro_batch_size=8", "train.grad_accumulation=1"]
    load_config(TINY_DIFFUSION, [FLOW_MATCHING, "loss.beta=0", "loss.old_logprobs=current", *one_update])
    load_config(TINY_DIFFUSION, ["loss.beta=0.1", "loss.kl=k3"])  # the SDE-step objective's slots are sampled


@pytest.mark.parametrize("old, new, value", [("rollout.sde.objective", "loss.objective", "flow_matching"),
                                             ("rollout.sde.train_sigmas", "loss.train_sigmas", "[0.4,0.9]")])
def test_a_moved_key_fails_in_one_line_naming_its_new_place(tmp_path, capsys, old, new, value):
    import yaml

    with pytest.raises(ConfigError) as info:  # as an override
        load_config(TINY_DIFFUSION, [f"{old}={value}"])
    assert str(info.value) == f"{old}: moved to {new}" and info.value.key == old
    data = yaml.safe_load(TINY_DIFFUSION.read_text())  # in an old YAML file, through the CLI
    data["rollout"]["sde"][old.rsplit(".", 1)[1]] = yaml.safe_load(value)
    old_config = tmp_path / "old.yaml"
    old_config.write_text(yaml.safe_dump(data))
    assert main(["train", "--config", str(old_config), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"{old}: moved to {new}")
    assert not (tmp_path / "run").exists()
    load_config(TINY_DIFFUSION, [f"{new}={value}", "loss.kl=closed_form"])  # where it is now


@pytest.mark.parametrize("entry", list(REMOVED_KEYS))
def test_a_removed_key_or_choice_fails_in_one_line_saying_why_and_what_instead(tmp_path, capsys, entry):
    import yaml

    key, _, choice = entry.partition(": ")
    why, instead = REMOVED_KEYS[entry]
    message = f"{key}: {choice + ' ' if choice else ''}removed ({why}); {instead}"
    value = choice or "null"
    with pytest.raises(ConfigError) as info:  # as an override
        load_config(TINY_DIFFUSION, [f"{key}={value}"])
    assert str(info.value) == message and info.value.key == key
    data = yaml.safe_load(TINY_DIFFUSION.read_text())  # in an old YAML file, through the CLI
    *sections, leaf = key.split(".")
    node = data
    for section in sections:
        node = node.setdefault(section, {})
    node[leaf] = yaml.safe_load(value)
    old_config = tmp_path / "old.yaml"
    old_config.write_text(yaml.safe_dump(data))
    assert main(["train", "--config", str(old_config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(message) and len([line for line in err if "removed" in line]) == 1
    assert not (tmp_path / "run").exists()
