"""The evaluation's numbers on hand-built cases whose answers are known.

An oracle IDM reads each action off the frame it led to (frame k + 1 of a video shows action k as grey levels,
one channel per action head), so the scores of any video are known in advance:
- a "world model" that returns the real continuation scores exactly the IDM's real-frame accuracy, with PSNR
  at its cap and SSIM 1;
- shifting the commanded actions by one frame (or a model that lags one frame behind them) lowers it to a
  known value;
- videos whose frames show chosen "predicted" actions give a known confusion matrix, hence known precision,
  recall and F1 per class.
And on a real recording: the held-out prompts pair each frame with the action that led to it, and the shipped
evaluation IDM reads the real frames far better under the true actions than under shifted ones.
(Issue 15's planted bug 3, the IDM scored against actions shifted by one frame, passed every earlier test.)
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import rlir.eval.evaluate as evaluate_module
from rlir.eval.evaluate import HeldOutPrompts, evaluate_world_model, idm_metrics

REPO = Path(__file__).resolve().parents[2]
HEADS = [5, 3]
SIZE = 16  # SSIM needs frames of at least its 11-pixel window


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def frames_showing(actions: torch.Tensor) -> torch.Tensor:
    """actions int [K, n, H] -> uint8 videos [K, n + 1, 3, SIZE, SIZE]: frame 0 (the prompt) is white, frame
    k + 1 shows action k, head h as the grey level 40 * a + 20 of channel h."""
    k, n, h = actions.shape
    videos = torch.full((k, n + 1, 3, SIZE, SIZE), 255, dtype=torch.uint8)
    videos[:, 1:, :h] = (40 * actions + 20).to(torch.uint8)[..., None, None]
    return videos


class OracleIDM(nn.Module):
    """Reads the actions back from frames_showing's videos: per-head logits [K, n, C_h]. ``confuse`` maps
    (head, class) to the class it is misread as, so that the real-frame accuracy is below 1."""

    def __init__(self, confuse=None):
        super().__init__()
        self.confuse = dict(confuse or {})

    def read(self, videos: torch.Tensor) -> torch.Tensor:
        return ((videos[:, 1:, :len(HEADS), 0, 0].long() - 20) // 40).clamp(min=0)  # [K, n, H]

    def forward(self, videos):
        actions = self.read(videos)
        for (head, seen), read_as in self.confuse.items():
            actions[..., head] = torch.where(actions[..., head] == seen, read_as, actions[..., head])
        return [10 * nn.functional.one_hot(actions[..., h].clamp(max=c - 1), c).float() for h, c in enumerate(HEADS)]


def misread(actions: torch.Tensor) -> torch.Tensor:
    """What OracleIDM(confuse={(0, 4): 0}) reads off frames showing ``actions``."""
    out = actions.clone()
    out[..., 0] = torch.where(actions[..., 0] == 4, 0, actions[..., 0])
    return out


def commanded_actions(k=6, n=5, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, c, (k, n), generator=g) for c in HEADS], -1)


def shifted(actions: torch.Tensor) -> torch.Tensor:
    """Each prompt's actions one frame late: the action for frame k is the one commanded for frame k - 1."""
    return torch.cat((actions[:, :1], actions[:, :-1]), dim=1)


def exact_accuracy(predicted: torch.Tensor, actions: torch.Tensor) -> float:
    return (predicted == actions).all(-1).float().mean().item()


@pytest.fixture
def case():
    actions = commanded_actions()
    prompts = HeldOutPrompts(real=frames_showing(actions), actions=actions)
    idm = OracleIDM(confuse={(0, 4): 0})  # head 0's class 4 is read as class 0
    predicted = misread(actions)
    expected = exact_accuracy(predicted, actions)  # the frames whose head-0 action is not 4
    assert 0.5 < expected < 1.0, expected
    return prompts, idm, predicted, expected


def evaluate_with(monkeypatch, model_videos, prompts, idms):
    """evaluate_world_model with a hand-built "world model": its policy returns ``model_videos`` (and records
    what it was asked to generate)."""
    asked = {}

    class HandBuilt:
        device = torch.device("cpu")

        def generate(self, prompts, num_samples, *, sampler, generator):
            asked.update(context=prompts.context, actions=prompts.actions, sampler=sampler)
            return model_videos

    monkeypatch.setattr(evaluate_module, "evaluation_policy", lambda *args, **kwargs: HandBuilt())
    metrics, videos = evaluate_world_model(None, None, idms, prompts, HEADS)
    assert torch.equal(asked["context"], prompts.real[:, :1]) and torch.equal(asked["actions"], prompts.actions)
    assert asked["sampler"] == "eval" and torch.equal(videos, model_videos)
    return metrics


def test_the_real_continuation_scores_the_real_frame_accuracy(monkeypatch, case):
    prompts, idm, predicted, expected = case
    idms = {"eval_idm": idm, "reward_idm": OracleIDM()}
    real = idm_metrics(idms, prompts.real, prompts, HEADS)
    assert real["eval_idm/frame_accuracy"] == pytest.approx(expected, abs=1e-7)
    assert real["reward_idm/frame_accuracy"] == 1.0  # the perfect reader
    assert real["eval_idm/report"].frame_accuracy == pytest.approx(expected)

    model = evaluate_with(monkeypatch, prompts.real.clone(), prompts, idms)
    for key in ("eval_idm/frame_accuracy", "reward_idm/frame_accuracy", "eval_idm/macro_precision",
                "eval_idm/macro_recall", "eval_idm/macro_f1"):
        assert model[key] == real[key], key
    assert model["psnr_db"] == pytest.approx(10 * math.log10(255**2 / 1e-10))  # identical frames: the cap
    assert model["ssim"] == pytest.approx(1.0)


def test_shifting_the_actions_lowers_it(monkeypatch, case):
    prompts, idm, predicted, expected = case
    idms = {"eval_idm": idm}
    late = HeldOutPrompts(real=prompts.real, actions=shifted(prompts.actions))
    got = idm_metrics(idms, prompts.real, late, HEADS)["eval_idm/frame_accuracy"]
    assert got == pytest.approx(exact_accuracy(predicted, late.actions), abs=1e-7)
    assert got < expected - 0.2
    # A world model one frame behind its actions (frame k + 1 shows action k - 1) scores lower too, and has a
    # finite PSNR against the real continuation.
    lagging = evaluate_with(monkeypatch, frames_showing(shifted(prompts.actions)), prompts, idms)
    lag = exact_accuracy(misread(shifted(prompts.actions)), prompts.actions)
    assert lagging["eval_idm/frame_accuracy"] == pytest.approx(lag, abs=1e-7)
    assert lag < expected - 0.2 and lagging["psnr_db"] < 60


def test_a_known_confusion_matrix_gives_known_precision_recall_f1(monkeypatch):
    # 3 prompts x 4 frames = 12 transitions, rows in (prompt, frame) order; head 0 has 3 classes used here.
    targets = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2],
                            [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1]]).t()
    shown = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 0, 2, 2, 2, 2],
                          [0, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 0]]).t()
    actions, videos = targets.reshape(3, 4, 2), frames_showing(shown.reshape(3, 4, 2))
    prompts = HeldOutPrompts(real=frames_showing(actions), actions=actions)
    metrics = evaluate_with(monkeypatch, videos, prompts, {"eval_idm": OracleIDM(), "reward_idm": OracleIDM()})
    report = metrics["eval_idm/report"]
    head0, head1 = report.heads
    np.testing.assert_array_equal(head0.confusion, [[3, 1, 0, 0, 0], [1, 2, 1, 0, 0], [0, 0, 4, 0, 0],
                                                    [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    np.testing.assert_allclose(head0.metrics.precision[:3], [3 / 4, 2 / 3, 4 / 5])
    np.testing.assert_allclose(head0.metrics.recall[:3], [3 / 4, 1 / 2, 1])
    np.testing.assert_allclose(head0.metrics.f1[:3], [3 / 4, 4 / 7, 8 / 9])
    assert np.isnan(head0.metrics.f1[3:]).all()  # classes that neither occur nor are predicted
    np.testing.assert_array_equal(head1.confusion, [[5, 1, 0], [1, 5, 0], [0, 0, 0]])
    np.testing.assert_allclose(head1.metrics.f1[:2], [5 / 6, 5 / 6])
    assert metrics["eval_idm/macro_f1"] == pytest.approx(((3 / 4 + 4 / 7 + 8 / 9) / 3 + 5 / 6) / 2)
    assert metrics["eval_idm/macro_precision"] == pytest.approx(((3 / 4 + 2 / 3 + 4 / 5) / 3 + 5 / 6) / 2)
    assert metrics["eval_idm/macro_recall"] == pytest.approx(((3 / 4 + 1 / 2 + 1) / 3 + 5 / 6) / 2)
    # head 0 is wrong at transitions 3, 6, 7 and head 1 at 8, 11: 7 of 12 have every head right.
    assert metrics["eval_idm/frame_accuracy"] == pytest.approx(7 / 12) == report.frame_accuracy
    assert [h.accuracy for h in report.heads] == pytest.approx([9 / 12, 10 / 12])


# ---- a real recording ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    from rlir.data import Recording, record

    root = tmp_path_factory.mktemp("handbuilt") / "rec"
    record("crafter", root, episodes=4, steps=40, seed=5, progress=False)
    return Recording(root)


def test_held_out_prompts_pair_each_frame_with_the_action_that_led_to_it(recording):
    prompts = HeldOutPrompts.from_recording(recording, count=4, frames=5, all_episodes=True)
    assert prompts.real.shape[1] == 6 and prompts.actions.shape[1] == 5
    episodes = {e: recording.load_episode(e) for e in recording.episode_ids}
    for real, actions in zip(prompts.real, prompts.actions):
        found = []
        for frames, episode_actions in episodes.values():
            frames = torch.from_numpy(frames).permute(0, 3, 1, 2)
            for start in range(len(frames) - 5):
                if torch.equal(frames[start:start + 6], real):
                    found.append(torch.equal(torch.from_numpy(episode_actions[start:start + 5]), actions))
        assert found and all(found)  # actions[k] moves real[k] to real[k + 1]


def test_the_shipped_eval_idm_reads_real_frames_under_true_actions_only(recording):
    from rlir.models.idm import InverseDynamicsModel

    idm = InverseDynamicsModel.from_pretrained(REPO / "checkpoints" / "crafter" / "eval_idm").eval()
    prompts = HeldOutPrompts.from_recording(recording, count=32, frames=5, all_episodes=True)
    assert len(prompts) == 32
    true = idm_metrics({"eval_idm": idm}, prompts.real, prompts, recording.action_space)["eval_idm/frame_accuracy"]
    late = HeldOutPrompts(real=prompts.real, actions=shifted(prompts.actions))
    wrong = idm_metrics({"eval_idm": idm}, prompts.real, late, recording.action_space)["eval_idm/frame_accuracy"]
    # 0.806 and 0.531 when written (README: 0.871 on 64 held-out prompts x 15 frames). The recording's policy
    # repeats its action about half the time, so the shifted actions still match some frames.
    assert true > 0.7 and wrong < true - 0.15, (true, wrong)
