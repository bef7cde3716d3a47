"""The verifier against Crafter's own state (episodes replayed from their seeds), and its metrics on videos."""
import numpy as np
import pytest
import torch

from rlir.data import Recording
from rlir.data.recorder import record
from rlir.eval.verify import calibrate, replay_truth, verifier_metrics

pytest.importorskip("crafter")


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    # seeds no verifier setting was chosen on (the calibration used the shipped recording's held-out episodes)
    return record("crafter", tmp_path_factory.mktemp("verify") / "data", episodes=3, steps=200, seed=700,
                  progress=False)


def test_the_verifier_agrees_with_crafters_state_on_real_frames(recording):
    result = calibrate(recording, recording.episode_ids)
    assert result["transitions"] >= 300  # an episode ends early when the player dies
    assert result["scroll_agreement_on_decided"] >= 0.97
    assert result["decided"] >= 0.8
    assert result["facing_agreement"] >= 0.99
    assert result["walkable_agreement_on_known"] >= 0.97 and result["target_tile_known"] >= 0.95


def test_replay_reproduces_the_recording(recording):
    frames, actions = recording.load_episode(recording.episode_ids[0])
    truth = replay_truth(recording, recording.episode_ids[0])
    assert len(truth["moved"]) == len(actions) == len(frames) - 1


def _videos(recording, count=4, frames=8):
    real, actions = [], []
    for episode in recording.episode_ids:
        video, action = recording.load_episode(episode)
        for start in list(range(0, len(action) - frames, 20))[:count]:
            real.append(video[start:start + frames + 1])
            actions.append(action[start:start + frames])
    return (torch.as_tensor(np.stack(real)).permute(0, 1, 4, 2, 3).contiguous(), torch.as_tensor(np.stack(actions)))


def test_real_video_scores_near_the_rules_and_a_frozen_world_scores_no_scroll(recording):
    real, actions = _videos(recording)
    metrics = verifier_metrics(real, actions, recording.action_space)
    assert metrics["verifier/scroll_fidelity"] > 0.5 and metrics["verifier/facing"] > 0.99
    assert metrics["verifier/stillness"] > 0.95 and metrics["verifier/blocked_aware"] > 0.8
    assert len(metrics["verifier/per_frame"]["scroll_fidelity"]) == actions.shape[1]
    frozen = real[:, :1].expand_as(real).contiguous()  # the prompt repeated: nothing moves, nothing turns
    frozen_metrics = verifier_metrics(frozen, actions, recording.action_space)
    assert frozen_metrics["verifier/scroll_fidelity"] == 0.0 and frozen_metrics["verifier/stillness"] == 1.0


def test_a_game_that_is_not_crafter_gets_no_verifier_rows():
    from rlir.envs.registry import get_action_space

    space = get_action_space("minecraft")
    assert verifier_metrics(torch.zeros(1, 2, 3, 72, 72, dtype=torch.uint8), torch.zeros(1, 1, space.num_heads,
                            dtype=torch.long), space) == {}


def test_the_delta_standard_error_is_the_paired_prompt_level_one():
    from rlir.eval.report import paired_delta_se

    before, after = {"hits": [1, 2], "count": [4, 4]}, {"hits": [2, 4], "count": [4, 4]}
    assert paired_delta_se(before, after) == pytest.approx(0.125)  # residuals -0.5, 0.5 of delta 3/8 per prompt
    assert paired_delta_se({"hits": [1], "count": [4]}, {"hits": [2], "count": [4]}) is None
