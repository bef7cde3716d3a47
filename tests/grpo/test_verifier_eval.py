"""The in-training evaluation's verifier shares equal ``rlir eval``'s on the same videos."""
import numpy as np
import pytest
import torch

from rlir.envs.crafter_verifier import VideoJudge
from rlir.eval.verify import verifier_metrics
from rlir.parallel import Parallel
from rlir.grpo.held_out import _verifier_means

pytest.importorskip("crafter")


def test_in_training_verifier_means_match_the_report(crafter_recording):
    from rlir.data import Recording

    crafter_recording = Recording(crafter_recording)
    videos, actions = [], []
    for episode in crafter_recording.episode_ids:
        frames, action = crafter_recording.load_episode(episode)
        videos.append(frames[:9])
        actions.append(action[:8])
    videos = torch.as_tensor(np.stack(videos)).permute(0, 1, 4, 2, 3)
    actions = torch.as_tensor(np.stack(actions))
    space = crafter_recording.action_space
    means = _verifier_means(VideoJudge.for_action_space(space), videos, actions, Parallel.current(),
                            torch.device("cpu"))
    report = verifier_metrics(videos, actions, space)
    for key in ("scroll_fidelity", "stillness", "content"):
        expected = report[f"verifier/{key}"]
        assert means[f"verifier/{key}"] == pytest.approx(expected, nan_ok=True)
