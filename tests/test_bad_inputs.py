"""Bad input gets a one-line error naming the file, flag or key, never a traceback; nothing written is lost."""
import json
import shutil
from pathlib import Path

import pytest

from rlir.cli import main
from rlir.data import record

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "checkpoints" / "crafter"


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def unknown_class_model(tmp_path):
    """A model directory whose config.json names a class rlir does not know."""
    model = tmp_path / "strange_model"
    shutil.copytree(SHIPPED / "idm", model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "_class_name": "MysteryNet"}))
    return model


def test_eval_of_a_model_of_unknown_class(unknown_class_model, capsys, tmp_path):
    data = record("crafter", tmp_path / "data", episodes=2, steps=20, seed=0, progress=False).root
    assert main(["eval", "--data", str(data), "--world-model", str(unknown_class_model), "--prompts", "1",
                 "--frames", "2"]) == 2
    one_line_error(capsys, "config.json", "MysteryNet")
    assert main(["eval", "--data", str(data), "--tokenizer", str(unknown_class_model)]) == 2
    one_line_error(capsys, "--tokenizer", "MysteryNet")
    assert main(["eval", "--data", str(tmp_path / "nowhere")]) == 2
    one_line_error(capsys, "nowhere")


def test_train_with_a_model_of_unknown_class(unknown_class_model, capsys):
    config = str(REPO / "configs" / "crafter_ar.yaml")
    assert main(["train", "--config", config, f"models.world_model={unknown_class_model}"]) == 2
    one_line_error(capsys, "models.kind", "MysteryNet")
    assert main(["train", "--config", config, "models.source=pretrained", f"models.idm={unknown_class_model}",
                 "data.source=synthetic"]) == 2
    one_line_error(capsys, "models.idm", "MysteryNet")


def test_resume_falls_back_to_the_newest_checkpoint_that_loads(tmp_path, capsys):
    config = str(REPO / "configs" / "tiny_ar.yaml")
    out = tmp_path / "run"
    assert main(["train", "--config", config, "--out", str(out), "train.steps=2", "log.tensorboard=false"]) == 0
    steps = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in steps] == ["step_00000001", "step_00000002"]
    (steps[-1] / "meta.json").write_text("{ half a file")  # a corrupt newest checkpoint
    capsys.readouterr()
    with pytest.warns(UserWarning, match="step_00000002.*cannot be loaded"):
        assert main(["train", "--config", config, "--out", str(out), "--resume", "train.steps=3",
                     "log.tensorboard=false"]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2, 3]  # step 2 redone from step 1's state
