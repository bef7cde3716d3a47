"""Cases that kill mutants of run_eval (rlir/commands/eval.py) which the evaluation tests let through
(docs/mutation.md): a GRPO run's own config.yaml names the tokenizer and IDMs the evaluation uses."""
import yaml

from rlir.commands.eval import _run_config_models


def test_a_runs_config_names_its_scoring_models(tmp_path):
    assert _run_config_models(tmp_path) == {}  # no config.yaml
    models = {"tokenizer": "tk", "idm": "reward_idm", "eval_idm": "held_out_idm", "world_model": "wm", "source": "x"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "models": models}))
    assert _run_config_models(tmp_path) == {"tokenizer": "tk", "idm": "reward_idm", "eval_idm": "held_out_idm"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "models": {"idm": "reward_idm", "eval_idm": ""}}))
    assert _run_config_models(tmp_path) == {"idm": "reward_idm"}
    (tmp_path / "config.yaml").write_text("")  # an empty file
    assert _run_config_models(tmp_path) == {}
