import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from rlir.data import ClipDataset, Recording, split_episodes


def test_split_is_by_episode_deterministic_and_disjoint():
    ids = [f"ep{i:05d}" for i in range(50)]
    train, heldout = split_episodes(ids, heldout_fraction=0.1)
    assert len(heldout) == 5 and set(train).isdisjoint(heldout) and sorted(train + heldout) == ids
    assert split_episodes(list(reversed(ids)), 0.1)[1] == list(reversed(heldout))  # independent of order
    assert split_episodes(ids, 0.1) == (train, heldout)


def test_small_recordings_keep_at_least_one_episode_on_each_side():
    assert [len(side) for side in split_episodes(["a", "b"], 0.1)] == [1, 1]
    assert split_episodes(["a"], 0.1) == (["a"], [])
    assert split_episodes(["a", "b", "c"], 0.0) == (["a", "b", "c"], [])


def test_clips_of_the_two_splits_never_share_an_episode(handwritten_recording):
    root = handwritten_recording[0]
    train = ClipDataset(root, "train", clip_frames=2, heldout_fraction=0.34)
    heldout = ClipDataset(root, "heldout", clip_frames=2, heldout_fraction=0.34)
    assert len(heldout.episode_ids) == 1
    assert set(train.episode_ids).isdisjoint(heldout.episode_ids)
    train_episodes = {train[i]["episode"] for i in range(len(train))}
    assert train_episodes.isdisjoint(heldout[i]["episode"] for i in range(len(heldout)))


def test_clip_alignment_action_t_moves_frame_t_to_t_plus_1(handwritten_recording):
    recording = Recording(handwritten_recording[0])
    clips = ClipDataset(recording, "train", context_frames=2, clip_frames=3, stride=2, heldout_episodes=[])
    assert len(clips) == sum((info.frames - 5) // 2 + 1 for info in recording.episodes)
    for index in range(len(clips)):
        item = clips[index]
        frames, actions = recording.load_episode(item["episode"])
        s = item["start"]
        assert item["context"].shape == (2, 3, 32, 32) and item["context"].dtype == torch.uint8
        assert item["target"].shape == (3, 3, 32, 32)
        assert item["actions"].shape == (4, 2) and item["actions"].dtype == torch.int64
        assert np.array_equal(item["context"].permute(0, 2, 3, 1).numpy(), frames[s : s + 2])
        assert np.array_equal(item["target"].permute(0, 2, 3, 1).numpy(), frames[s + 2 : s + 5])
        # actions[i] moves window frame i to i+1; the last clip_frames of them produce the targets.
        assert np.array_equal(item["actions"].numpy(), actions[s : s + 4])


def test_explicit_heldout_episodes_and_a_dataloader(handwritten_recording):
    root = handwritten_recording[0]
    heldout = ClipDataset(root, "heldout", clip_frames=4, heldout_episodes=["run-2"])
    assert heldout.episode_ids == ["run-2"]
    batch = next(iter(DataLoader(heldout, batch_size=2)))
    assert batch["context"].shape == (2, 1, 3, 32, 32) and batch["actions"].shape == (2, 4, 2)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"split": "test"}, "split must be one of"),
        ({"clip_frames": 0}, "clip_frames"),
        ({"context_frames": 0}, "context_frames"),
        ({"stride": 0}, "stride"),
        ({"heldout_episodes": ["nope"]}, r"heldout_episodes \['nope'\]"),
        ({"clip_frames": 20}, "no train clips"),
        ({"heldout_fraction": 1.0}, "heldout_fraction"),
    ],
)
def test_bad_arguments_are_value_errors_naming_them(handwritten_recording, arguments, message):
    with pytest.raises(ValueError, match=message):
        ClipDataset(handwritten_recording[0], **arguments)


def test_clips_from_a_real_recording(lossless_recording):
    clips = ClipDataset(lossless_recording, "train", clip_frames=8)
    item = clips[len(clips) - 1]
    assert item["target"].shape == (8, 3, 72, 72) and item["actions"].shape == (8, 1)
    assert int(item["actions"].max()) < 17
