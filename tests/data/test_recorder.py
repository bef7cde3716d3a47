import json

import numpy as np
import pytest

import rlir.data.video
from rlir.data import Recording, RecordingError, record
from rlir.envs import CrafterEnv


def test_manifest_describes_the_recording(lossless_recording, recording_settings):
    episodes, steps, seed = (recording_settings[k] for k in ("episodes", "steps", "seed"))
    manifest = json.loads((lossless_recording.root / "manifest.json").read_text())
    assert manifest["format"] == "rlir-recordings/1"
    assert manifest["env"] == "crafter" and manifest["fps"] == 15 and manifest["frame_size"] == [72, 72]
    assert len(manifest["action_space"]["heads"][0]["classes"]) == 17
    assert manifest["episodes"] == [
        {"id": f"ep{i:05d}", "frames": steps + 1, "seed": seed + i} for i in range(episodes)
    ]
    first_line = (lossless_recording.root / "ep00000.jsonl").read_text().splitlines()[0]
    assert json.loads(first_line).keys() == {"t", "action"} and json.loads(first_line)["t"] == 0


def test_loaded_frames_are_exactly_the_observations_of_a_replay(lossless_recording, recording_settings):
    steps = recording_settings["steps"]
    for info in lossless_recording.episodes:
        frames, actions = lossless_recording.load_episode(info.id)
        assert frames.shape == (steps + 1, 72, 72, 3) and frames.dtype == np.uint8
        assert actions.shape == (steps, 1) and actions.dtype == np.int64
        env = CrafterEnv(seed=info.seed)
        assert np.array_equal(env.reset(), frames[0])
        for t, action in enumerate(actions):
            frame, _ = env.step(env.action_space.decode(action))
            assert np.array_equal(frame, frames[t + 1]), f"{info.id} frame {t + 1}"


def test_same_seed_gives_identical_recordings(lossless_recording, recording_settings, tmp_path):
    again = record(out=tmp_path, **recording_settings)
    for episode in lossless_recording.episode_ids:
        first = (lossless_recording.root / f"{episode}.jsonl").read_bytes()
        assert (again.root / f"{episode}.jsonl").read_bytes() == first
        assert np.array_equal(again.load_episode(episode)[0], lossless_recording.load_episode(episode)[0])


def test_an_interrupted_recording_keeps_complete_episodes_and_resumes(
    lossless_recording, recording_settings, tmp_path, monkeypatch
):
    original_append = rlir.data.video.VideoWriter.append
    frames_seen = []

    def append_then_interrupt(self, frame):
        frames_seen.append(1)
        if len(frames_seen) == recording_settings["steps"] + 1 + 5:  # 5 frames into the second episode
            raise KeyboardInterrupt
        original_append(self, frame)

    monkeypatch.setattr(rlir.data.video.VideoWriter, "append", append_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        record(out=tmp_path, **recording_settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ep00000.jsonl", "ep00000.mp4", "manifest.json"]
    interrupted = Recording(tmp_path)
    assert interrupted.episode_ids == ["ep00000"]
    interrupted.load_episode("ep00000")

    monkeypatch.setattr(rlir.data.video.VideoWriter, "append", original_append)
    resumed = record(out=tmp_path, **recording_settings)
    assert resumed.episodes == lossless_recording.episodes
    for episode in resumed.episode_ids:
        assert np.array_equal(resumed.load_episode(episode)[0], lossless_recording.load_episode(episode)[0])
        assert np.array_equal(resumed.load_episode(episode)[1], lossless_recording.load_episode(episode)[1])


def test_resuming_with_other_settings_is_refused(lossless_recording, recording_settings):
    other_seed = {**recording_settings, "seed": recording_settings["seed"] + 1}
    with pytest.raises(RecordingError, match="different settings.*recorder"):
        record(out=lossless_recording.root, **other_seed)


def test_resuming_a_complete_recording_records_nothing(lossless_recording, recording_settings, monkeypatch):
    monkeypatch.setattr("rlir.data.recorder.record_episode", lambda *args, **kwargs: pytest.fail("re-recorded"))
    again = record(out=lossless_recording.root, **recording_settings)
    assert again.episodes == lossless_recording.episodes


@pytest.mark.parametrize("argument", ["episodes", "steps", "size"])
def test_bad_arguments_name_themselves(tmp_path, argument):
    arguments = {"episodes": 1, "steps": 1, "size": 64, argument: 0}
    with pytest.raises(ValueError, match=argument):
        record("crafter", tmp_path, **arguments)


def test_unrecordable_env_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot be recorded"):
        record("minecraft", tmp_path, episodes=1, steps=1)
