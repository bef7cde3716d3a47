import json

import pytest

import rlir.cli
from rlir.data import Recording


def test_record_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_code:
        rlir.cli.main(["data", "record", "--help"])
    assert exit_code.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--env", "--episodes", "--steps", "--seed", "--out", "--lossless", "--size"):
        assert option in help_text


def test_a_tiny_recording_through_the_cli(tmp_path, capsys):
    out = tmp_path / "rec"
    argv = ["data", "record", "--env", "crafter", "--episodes", "1", "--steps", "5", "--seed", "3", "--size", "48",
            "--out", str(out), "--quiet"]
    assert rlir.cli.main(argv) == 0
    assert "1 episodes, 5 transitions" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["frame_size"] == [48, 48] and manifest["episodes"] == [{"id": "ep00000", "frames": 6, "seed": 3}]
    frames, actions = Recording(out).load_episode("ep00000")
    assert frames.shape == (6, 48, 48, 3) and actions.shape == (5, 1)

    assert rlir.cli.main(["data", "check", str(out)]) == 0
    assert "OK, env crafter, 1 episodes, 5 transitions" in capsys.readouterr().out


def test_check_reports_a_broken_recording(tmp_path, capsys):
    assert rlir.cli.main(["data", "check", str(tmp_path)]) == 1
    assert f"{tmp_path / 'manifest.json'}: no manifest" in capsys.readouterr().err


def test_record_reports_bad_arguments_without_a_traceback(tmp_path, capsys):
    argv = ["data", "record", "--env", "crafter", "--episodes", "0", "--steps", "5", "--out", str(tmp_path)]
    assert rlir.cli.main(argv) == 1
    assert "episodes must be a positive int" in capsys.readouterr().err
