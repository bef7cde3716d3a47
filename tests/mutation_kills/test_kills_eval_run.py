"""run_eval at its boundary (docs/mutation.md: these kill the mutants of run_eval, now in rlir/commands/eval.py):
the documented protocol's defaults, the bounds on frames and prompts, explicit scoring models honoured, bad inputs
named by their flag, and no report written without an out directory."""
import inspect
import re
import shutil

import pytest

from rlir.data import record
from rlir.commands.eval import EvalError, run_eval

SHIPPED = "checkpoints/crafter"


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    data = tmp_path_factory.mktemp("eval_run") / "rec"
    record("crafter", data, episodes=2, steps=12, seed=3, progress=False)
    return data


def test_defaults_are_the_documented_protocol():
    defaults = {k: p.default for k, p in inspect.signature(run_eval).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert defaults == dict(run=None, world_model=None, baseline=None, tokenizer=None, idm=None, eval_idm=None,
                            frames=15, prompts=64, temperature=1.0, seed=0, grid=4, action_sensitivity=False,
                            all_episodes=False, out=None, command="")


@pytest.mark.parametrize("frames, prompts", [(0, 1), (1, 0), (0, 0), (-1, 5)])
def test_frames_and_prompts_must_be_positive(frames, prompts):
    with pytest.raises(EvalError, match=r"^--frames and --prompts must be >= 1$"):
        run_eval("no-such-recording", frames=frames, prompts=prompts)


def test_one_frame_of_one_prompt_with_explicit_scoring_models_and_no_out(recording, tmp_path):
    copies = {}
    for key in ("tokenizer", "idm", "eval_idm"):
        copies[key] = tmp_path / key
        shutil.copytree(f"{SHIPPED}/{key}", copies[key])
    report = run_eval(recording, frames=1, prompts=1, **copies)
    assert report["frames"] == 1 and report["prompts"] == 1
    assert report["scoring_models"] == {k: str(v) for k, v in copies.items()}
    assert report["all_episodes"] is False and report["command"] == "" and report["temperature"] == 1.0
    assert not any(recording.parent.glob("**/report.json")) and not (tmp_path / "eval").exists()


def test_all_episodes_draws_prompts_from_every_episode(recording):
    held_out = run_eval(recording, frames=2, prompts=500)["prompts"]
    everything = run_eval(recording, frames=2, prompts=500, all_episodes=True)
    assert everything["all_episodes"] is True and everything["prompts"] > held_out


@pytest.mark.parametrize("flag", ["tokenizer", "idm", "eval_idm"])
def test_a_bad_scoring_model_is_named_by_its_flag(recording, tmp_path, flag):
    option = "--" + flag.replace("_", "-")
    with pytest.raises(ValueError, match=rf"^{re.escape(option)}: {re.escape(str(tmp_path))}: not a saved model"):
        run_eval(recording, frames=1, prompts=1, **{flag: tmp_path})


def test_too_many_frames_for_the_recording_names_data(recording):
    with pytest.raises(EvalError, match=r"^--data: no heldout clips in .*a clip needs 1001 frames"):
        run_eval(recording, frames=1000, prompts=1)
