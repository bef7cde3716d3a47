"""Frame size is a setting everywhere: a recording of two action heads at a non-square 24x40 goes through every
`rlir pretrain` command, `rlir train` and `rlir eval`, with the IDM made at another size (32x32) than the world
model's frames, and an old 64x64 recording loads at the models' size."""
import json

import numpy as np
import pytest
import yaml

from rlir.cli import main
from rlir.data import Recording, record
from rlir.data.layout import EpisodeInfo, Manifest, write_manifest
from rlir.data.video import VideoWriter
from rlir.envs.action_space import ActionHead, ActionSpace

HEIGHT, WIDTH = 24, 40
SPACE = ActionSpace([ActionHead("move", ["none", "left", "right"]), ActionHead("jump", ["off", "on"])])


def write_nonsquare_recording(root, episodes: int = 6, frames: int = 14):
    """Blocky frames that scroll left/right with the "move" head, as a user's own recorder might write them."""
    rng = np.random.default_rng(0)
    infos = []
    for e in range(episodes):
        world = rng.integers(0, 256, (HEIGHT // 8, 64, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
        x, lines = 40, []
        with VideoWriter(root / f"ep{e:05d}.mp4", (HEIGHT, WIDTH), fps=15, lossless=True) as video:
            video.append(world[:, x:x + WIDTH])
            for t in range(frames - 1):
                move, jump = int(rng.integers(3)), int(rng.integers(2))
                x = int(np.clip(x + 8 * (move == 2) - 8 * (move == 1), 0, world.shape[1] - WIDTH))
                video.append(world[:, x:x + WIDTH])
                lines.append(json.dumps({"t": t, "action": {"move": move, "jump": jump}}))
        (root / f"ep{e:05d}.jsonl").write_text("\n".join(lines) + "\n")
        infos.append(EpisodeInfo(f"ep{e:05d}", frames=frames))
    write_manifest(root, Manifest("toy", 15, (HEIGHT, WIDTH), SPACE, episodes=infos))
    return root


@pytest.fixture(scope="module")
def nonsquare_recording(tmp_path_factory):
    return write_nonsquare_recording(tmp_path_factory.mktemp("toy"))


TINY_WM = ["--layers", "1", "--d-model", "32", "--heads", "2", "--max-frames", "6", "--clip-frames", "4",
           "--eval-frames", "3", "--eval-prompts", "2", "--batch", "2", "--steps", "2", "--quiet"]


def test_a_nonsquare_two_head_recording_runs_end_to_end(nonsquare_recording, tmp_path, one_thread):
    data, models = str(nonsquare_recording), tmp_path / "models"
    assert main(["pretrain", "tokenizer", "--data", data, "--out", str(models / "tokenizer"), "--steps", "2",
                 "--batch", "4", "--quiet"]) == 0
    assert main(["pretrain", "idm", "--data", data, "--out", str(models / "idm"), "--steps", "2", "--batch", "2",
                 "--window", "4", "--width", "16", "--depth", "1", "--heads", "2", "--channels", "4", "4",
                 "--frame-size", "32", "32", "--eval-every", "0", "--quiet"]) == 0
    assert main(["pretrain", "world-model", "--kind", "ar", "--data", data, "--tokenizer", str(models / "tokenizer"),
                 "--out", str(models / "ar"), "--kv-heads", "1", "--frame-action-embedding", "--previous-frame-input",
                 *TINY_WM]) == 0
    assert main(["pretrain", "world-model", "--kind", "diffusion", "--data", data, "--tokenizer",
                 str(models / "tokenizer"), "--out", str(models / "dit"), "--patch-size", "1",
                 "--previous-frame-neighbourhood", "--sample-steps", "1", *TINY_WM]) == 0

    tokenizer = json.loads((models / "tokenizer" / "config.json").read_text())
    assert tokenizer["image_size"] == [HEIGHT, WIDTH]  # the recording's size, not square
    assert json.loads((models / "idm" / "config.json").read_text())["frame_size"] == [32, 32]
    ar = json.loads((models / "ar" / "config.json").read_text())
    assert ar["frame_grid"] == [3, 5] and ar["tokens_per_frame"] == 15 and ar["action_head_sizes"] == [3, 2]

    config = yaml.safe_load(open("configs/tiny_ar.yaml"))
    config["models"] = {"source": "pretrained", "world_model": str(models / "ar"),
                        "tokenizer": str(models / "tokenizer"), "idm": str(models / "idm"),
                        "eval_idm": str(models / "idm")}
    config["data"] = {"source": "recording", "path": data, "context_frames": 1, "heldout_fraction": 0.2}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--out", str(run)]) == 0
    step = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert np.isfinite(step["reward/mean"]) and "reward/head_acc/jump" in step

    # --run scores with the run's own tokenizer and IDMs (its config.yaml), not the shipped Crafter ones.
    assert main(["eval", "--data", data, "--run", str(run), "--prompts", "2", "--frames", "3"]) == 0
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["scoring_models"] == {"tokenizer": str(models / "tokenizer"), "idm": str(models / "idm"),
                                        "eval_idm": str(models / "idm")}
    assert set(report["metrics"]["eval_idm/macro_f1"]) >= {"before", "after", "real"}
    assert [h["name"] for h in report["eval_idm_per_action"]["after"]["heads"]] == ["move", "jump"]


def test_an_old_64px_recording_loads_at_the_models_size(tmp_path):
    old = record("crafter", tmp_path / "old", episodes=1, steps=3, seed=0, size=64, progress=False)
    assert old.frame_size == (64, 64)
    frames, actions = Recording(old.root, frame_size=(72, 72)).load_episode("ep00000")
    assert frames.shape == (4, 72, 72, 3) and actions.shape == (3, 1)
