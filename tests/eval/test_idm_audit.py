"""The shipped IDMs against counterfeits: the sprite alone must not read as a move, a real scroll must be credited
whatever the sprite shows (the reward IDM), and `rlir idm audit` reports it."""
import json

import pytest
import torch

from rlir.assets import resolve
from rlir.cli import main
from rlir.data.recorder import record
from rlir.eval.evaluate import HeldOutPrompts
from rlir.eval.idm_audit import (avatar_only, crafter_avatar_box, crafter_probe_mask, probe_scores, world_only)
from rlir.models.idm import InverseDynamicsModel

pytest.importorskip("crafter")
SHIPPED = "checkpoints/crafter"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    # Crafter seeds no checkpoint was trained on (the shipped recording is seeds 0-59)
    recording = record("crafter", tmp_path_factory.mktemp("audit") / "data", episodes=3, steps=120, seed=900,
                       progress=False)
    prompts = HeldOutPrompts.from_recording(recording, 12, 15, all_episodes=True)
    masks = crafter_probe_mask(prompts.real, prompts.actions, recording.action_space)
    return recording, prompts, masks


def _scores(name, clips):
    recording, prompts, masks = clips
    idm = InverseDynamicsModel.from_pretrained(resolve(f"{SHIPPED}/{name}")).float().eval()
    return probe_scores(idm, prompts.real, prompts.actions, masks, crafter_avatar_box(72))


def test_the_shipped_reward_idm_reads_the_world_not_the_sprite(clips):
    scores = _scores("idm", clips)
    assert scores["moves"] >= 40 and scores["turned_moves"] >= 25
    assert scores["real"] >= 0.85
    assert scores["avatar_only"] <= 0.35  # the sprite-reading IDM it replaced credited 0.93 of these
    assert scores["world_only"] >= 0.80  # ... and 0.00 of these


def test_the_shipped_eval_idm_is_not_fooled_by_the_sprite_either(clips):
    scores = _scores("eval_idm", clips)
    assert scores["real"] >= 0.85
    assert scores["avatar_only"] <= 0.10


def test_the_probes_move_only_what_they_say():
    videos = torch.randint(0, 255, (2, 4, 3, 72, 72), dtype=torch.uint8)
    box = crafter_avatar_box(72)
    fake = avatar_only(videos, box)
    assert torch.equal(fake[:, :, :, 24:32, 32:40], videos[:, :, :, 24:32, 32:40])
    assert torch.equal(fake[:, 3, :, :24], videos[:, 0, :, :24])
    frozen = world_only(videos, box)
    assert torch.equal(frozen[:, 3, :, 24:32, 32:40], videos[:, 0, :, 24:32, 32:40])
    assert torch.equal(frozen[:, 3, :, :24], videos[:, 3, :, :24])


def test_rlir_idm_audit_writes_its_report(clips, tmp_path):
    recording = clips[0]
    assert main(["idm", "audit", "--data", str(recording.root), "--all-episodes", "--prompts", "3", "--frames", "6",
                 "--idm", f"{SHIPPED}/idm", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "audit.json").read_text())
    assert set(result["idms"]) == {f"{SHIPPED}/idm"}
    assert (tmp_path / "occlusion.png").stat().st_size > 0 and "avatar-only" in (tmp_path / "audit.md").read_text()


def test_rlir_idm_audit_names_a_bad_argument(clips, capsys):
    assert main(["idm", "audit", "--data", str(clips[0].root), "--prompts", "0"]) == 2
    assert "--prompts" in capsys.readouterr().err
