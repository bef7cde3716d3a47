import json

import pytest
import torch
from safetensors import safe_open

import rlir.cli
from rlir.data import record, split_episodes
from rlir.models.idm import InverseDynamicsModel
from rlir.pretrain.idm import train

# Tiny sizes: 3 steps of 2 clips of 6 frames through a 2-conv CNN.
TINY = ["--steps", "3", "--batch", "2", "--window", "6", "--depth", "1", "--heads", "2", "--channels", "4", "8",
        "--eval-every", "2", "--log-every", "1", "--quiet"]
FILES = ["config.json", "confusion.png", "diffusion_pytorch_model.safetensors", "metrics.json", "metrics.jsonl"]


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """2 Crafter episodes of 30 steps: one trains, one is held out."""
    return record("crafter", tmp_path_factory.mktemp("idm_rec"), episodes=2, steps=30, seed=5, progress=False)


def test_pretrain_idm_end_to_end(recording, tmp_path):
    out = tmp_path / "runs" / "idm"
    argv = ["pretrain", "idm", "--data", str(recording.root), "--out", str(out), "--width", "32", *TINY]
    assert rlir.cli.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == FILES
    assert [p.name for p in out.parent.iterdir()] == ["idm"]  # no temporary directory left behind

    metrics = json.loads((out / "metrics.json").read_text())
    heldout = split_episodes(recording.episode_ids, 0.1)[1]
    assert metrics["role"] == "reward" and metrics["training"]["seed"] == 0
    assert metrics["heldout"]["episodes"] == heldout
    assert metrics["heldout"]["count"] == sum(recording.episode(e).frames - 1 for e in heldout)
    assert set(metrics["heldout"]["heads"][0]["classes"]) == set(recording.action_space.heads[0].classes)
    assert metrics["model"]["config"]["width"] == 32 and metrics["model"]["dtype"] == "fp32"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [1, 2, 3]
    assert [line["step"] for line in lines if "heldout_frame_accuracy" in line] == [2]

    model = InverseDynamicsModel.from_pretrained(out).eval()
    frames, _ = recording.load_episode(heldout[0])
    video = torch.from_numpy(frames.copy()).permute(0, 3, 1, 2)[None]
    assert model.predict(video).shape == (1, len(frames) - 1, 1)



def test_eval_idm_has_its_own_seed_and_width_saves_bf16_and_replaces_out(recording, tmp_path, capsys):
    out = tmp_path / "eval_idm"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    argv = ["pretrain", "idm", "--eval", "--data", str(recording.root), "--out", str(out), "--dtype", "bf16",
            "--class-weights", "inverse-sqrt", *TINY[:-1]]
    assert rlir.cli.main(argv) == 0
    assert "move_left" in capsys.readouterr().out  # the table
    assert sorted(p.name for p in out.iterdir()) == FILES
    assert [p.name for p in tmp_path.iterdir()] == ["eval_idm"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["role"] == "eval" and metrics["training"]["seed"] == 1
    assert metrics["model"]["config"]["width"] == 96 and metrics["model"]["dtype"] == "bf16"
    with safe_open(out / "diffusion_pytorch_model.safetensors", "pt") as weights:
        dtypes = {weights.get_tensor(k).dtype for k in weights.keys()}
    assert dtypes == {torch.bfloat16, torch.int64}  # int64: the BatchNorms' num_batches_tracked


@pytest.mark.parametrize("overrides, message", [
    (dict(steps=0), "steps"),
    (dict(batch=-1), "batch"),
    (dict(lr=0.0), "lr"),
    (dict(window=1), "window"),
    (dict(window=40), "no train clips"),
    (dict(heldout_fraction=0.0), "heldout_fraction"),
    (dict(class_weights="balanced"), "class_weights"),
    (dict(dtype="int8"), "dtype"),
    (dict(width=30, heads=4), "divisible by heads"),
    (dict(avatar="ignored"), "avatar_box"),
    (dict(counterfeits=0.5), "avatar_box"),
    (dict(world_only=0.5), "avatar_box"),
    (dict(avatar_box=[24, 32, 8, 8], counterfeits=0.5, world_only=0.5), "world_only"),
    (dict(avatar_box=[24, 32, 8]), "avatar_box"),
    (dict(avatar_box=[70, 32, 8, 8], avatar="ignored"), "ignore_box must be"),
])
def test_bad_arguments_raise(recording, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(recording.root, tmp_path / "out", **{"width": 32, "quiet": True, **overrides})
    assert not (tmp_path / "out").exists()


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    argv = ["pretrain", "idm", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]
    assert rlir.cli.main(argv) == 1
    error = capsys.readouterr().err
    assert error.startswith("rlir pretrain idm: error:") and "manifest.json" in error


def test_the_avatar_settings_reach_the_model_and_the_training(recording, tmp_path):
    """avatar: ignored makes the IDM blind to the box; counterfeits train on avatar-only clips (labelled noop)."""
    out = tmp_path / "idm"
    argv = ["pretrain", "idm", "--data", str(recording.root), "--out", str(out), "--width", "32", *TINY,
            "--avatar-box", "24", "32", "8", "8", "--avatar", "ignored", "--counterfeits", "0.5"]
    assert rlir.cli.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training"]["counterfeits"] == 0.5 and metrics["training"]["avatar"] == "ignored"
    model = InverseDynamicsModel.from_pretrained(out).eval()
    assert model.config.ignore_box == [24, 32, 8, 8]
    frames = torch.randint(0, 255, (1, 3, 3, 72, 72), dtype=torch.uint8)
    changed = frames.clone()
    changed[..., 24:32, 32:40] = 255 - changed[..., 24:32, 32:40]
    assert torch.equal(model(frames)[0], model(changed)[0])  # the box is never seen
    changed[..., 0:8, 0:8] = 255 - changed[..., 0:8, 0:8]
    assert not torch.equal(model(frames)[0], model(changed)[0])  # the rest is


def test_counterfeit_clips_keep_the_first_world_and_are_labelled_noop(recording):
    from rlir.pretrain.idm import _counterfeiter

    space = recording.action_space
    counterfeit = _counterfeiter(space, [24, 32, 8, 8], 0.999, 0.0, None, (72, 72))
    frames = torch.randint(0, 255, (4, 5, 3, 72, 72), dtype=torch.uint8)
    actions = torch.ones(4, 4, 1, dtype=torch.long)
    fake, labels = counterfeit(frames, actions, [("e", 0)] * 4, torch.Generator().manual_seed(0))
    assert torch.equal(fake[:, 4, :, :24], frames[:, 0, :, :24]) and torch.equal(fake[..., 24:32, 32:40],
                                                                                   frames[..., 24:32, 32:40])
    assert (labels == space.heads[0].classes.index("noop")).all()
    assert (actions == 1).all()  # the caller's batch is left alone


def test_clips_labelled_as_shown_credit_a_blocked_move_and_a_scroll_whatever_the_sprite(recording):
    """counterfeit_labels as_shown: a counterfeit's transition in which the player moved becomes noop, a blocked
    move keeps its action; world_only: the scroll keeps its move, a blocked move (only a turn, now frozen) is noop."""
    from rlir.pretrain.idm import _counterfeiter

    space = recording.action_space
    noop, left, do = (space.heads[0].classes.index(c) for c in ("noop", "move_left", "do"))
    moved = {"e": torch.tensor([True, False, False, True, False])}
    actions = torch.tensor([[left, left, do, left]])[..., None]  # moved, blocked, not a move, moved
    frames = torch.randint(0, 255, (1, 5, 3, 72, 72), dtype=torch.uint8)
    windows = [("e", 0)]
    fake, labels = _counterfeiter(space, [24, 32, 8, 8], 0.999, 0.0, moved, (72, 72))(
        frames, actions, windows, torch.Generator().manual_seed(0))
    assert labels[0, :, 0].tolist() == [noop, left, do, noop]
    assert torch.equal(fake[:, 3, :, :24], frames[:, 0, :, :24])  # the world of the first frame
    world, labels = _counterfeiter(space, [24, 32, 8, 8], 0.0, 0.999, moved, (72, 72))(
        frames, actions, windows, torch.Generator().manual_seed(0))
    assert labels[0, :, 0].tolist() == [left, noop, do, left]
    assert torch.equal(world[..., 24:32, 32:40], frames[:, :1, :, 24:32, 32:40].expand(-1, 5, -1, -1, -1))
    assert torch.equal(world[:, :, :, :24], frames[:, :, :, :24])  # the real world


def test_as_shown_labels_replay_crafter_and_are_recorded(recording, tmp_path):
    out = tmp_path / "idm"
    argv = ["pretrain", "idm", "--data", str(recording.root), "--out", str(out), "--width", "32", *TINY,
            "--avatar-box", "24", "32", "8", "8", "--counterfeits", "0.25", "--counterfeit-labels", "as_shown",
            "--world-only", "0.25"]
    assert rlir.cli.main(argv) == 0
    training = json.loads((out / "metrics.json").read_text())["training"]
    assert (training["counterfeit_labels"], training["world_only"]) == ("as_shown", 0.25)
