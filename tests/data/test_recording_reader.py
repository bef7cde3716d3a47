import json
import shutil

import numpy as np
import pytest

from rlir.data import Recording, RecordingError
from rlir.data.video import resize_frames


def test_a_handwritten_recording_with_extra_keys_and_another_size_loads(handwritten_recording):
    root, episodes = handwritten_recording
    recording = Recording(root)
    assert recording.env == "my-game" and recording.fps == 20 and recording.frame_size == (32, 32)
    assert recording.action_space.head_sizes == [3, 2]
    assert recording.episode_ids == list(episodes) and recording.episode("run-1").seed is None
    for episode, (written_frames, written_actions) in episodes.items():
        frames, actions = recording.load_episode(episode)
        assert frames.shape == (len(written_frames), 32, 32, 3) and frames.dtype == np.uint8
        assert np.array_equal(frames, resize_frames(written_frames, (32, 32)))
        assert actions.dtype == np.int64
        assert actions.tolist() == [[a["move"], a["jump"]] for a in written_actions]


def test_decoded_episodes_are_cached_and_read_only(handwritten_recording):
    recording = Recording(handwritten_recording[0])
    frames, actions = recording.load_episode("run-0")
    assert recording.load_episode("run-0")[0] is frames
    with pytest.raises(ValueError):
        frames[0, 0, 0, 0] = 1


def test_resize_keeps_a_constant_image_constant():
    frames = np.full((2, 40, 48, 3), 77, dtype=np.uint8)
    assert np.array_equal(resize_frames(frames, (32, 32)), np.full((2, 32, 32, 3), 77, dtype=np.uint8))


def _manifest(root):
    return json.loads((root / "manifest.json").read_text())


def _write_manifest(root, manifest):
    (root / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.update(format="rlir-recordings/2"), '"format" must be'),
        (lambda m: m.pop("episodes"), r"missing keys \['episodes'\]"),
        (lambda m: m.update(frame_size=[32]), '"frame_size" must be'),
        (lambda m: m.update(fps=0), '"fps" must be'),
        (lambda m: m.update(action_space={"heads": [{"name": "move", "classes": ["x"]}]}), "bad \"action_space\""),
        (lambda m: m["episodes"][1].update(frames="9"), r"episodes\[1\].frames"),
        (lambda m: m["episodes"][1].update(id="../run-0"), r"episodes\[1\].id"),
        (lambda m: m["episodes"].append(dict(m["episodes"][0])), "unique"),
    ],
)
def test_a_bad_manifest_is_an_error_naming_it(handwritten_recording, change, message):
    root = handwritten_recording[0]
    manifest = _manifest(root)
    change(manifest)
    _write_manifest(root, manifest)
    with pytest.raises(RecordingError, match=message) as error:
        Recording(root)
    assert str(root / "manifest.json") in str(error.value)


def test_a_missing_or_unparsable_manifest_is_an_error_naming_it(tmp_path):
    with pytest.raises(RecordingError, match="no manifest") as error:
        Recording(tmp_path)
    assert str(tmp_path / "manifest.json") in str(error.value)
    (tmp_path / "manifest.json").write_text('{"format": "rlir-recordings/1", ')
    with pytest.raises(RecordingError, match="not valid JSON"):
        Recording(tmp_path)


@pytest.mark.parametrize("suffix", [".mp4", ".jsonl"])
def test_a_missing_episode_file_is_an_error_naming_it(handwritten_recording, suffix):
    root = handwritten_recording[0]
    (root / f"run-2{suffix}").unlink()
    with pytest.raises(RecordingError, match=f"run-2\\{suffix}: missing"):
        Recording(root)


def test_a_jsonl_truncated_mid_line_is_an_error_naming_file_and_line(handwritten_recording):
    root = handwritten_recording[0]
    path = root / "run-1.jsonl"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(RecordingError, match=r"run-1\.jsonl, line 8: not valid JSON"):
        Recording(root).load_episode("run-1")


def test_a_jsonl_missing_its_last_lines_is_an_error_naming_it(handwritten_recording):
    root = handwritten_recording[0]
    path = root / "run-1.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:5]))
    with pytest.raises(RecordingError, match=r"run-1\.jsonl: has 5 actions, expected 8"):
        Recording(root).load_episode("run-1")


def test_a_frame_count_mismatch_is_an_error_naming_the_video(handwritten_recording):
    root = handwritten_recording[0]
    manifest = _manifest(root)
    manifest["episodes"][0]["frames"] = 7
    _write_manifest(root, manifest)
    with pytest.raises(RecordingError, match=r"run-0\.mp4: has 6 frames, the manifest says 7"):
        Recording(root).load_episode("run-0")


def test_an_action_out_of_range_is_an_error_naming_file_and_line(handwritten_recording):
    root = handwritten_recording[0]
    path = root / "run-0.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = json.dumps({"t": 2, "action": {"move": 3, "jump": 0}}) + "\n"
    path.write_text("".join(lines))
    with pytest.raises(RecordingError, match=r"run-0\.jsonl, line 3: .*'move'.*out of range"):
        Recording(root).load_episode("run-0")


def test_out_of_order_lines_are_an_error(handwritten_recording):
    root = handwritten_recording[0]
    path = root / "run-0.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[1], lines[2] = lines[2], lines[1]
    path.write_text("".join(lines))
    with pytest.raises(RecordingError, match=r'run-0\.jsonl, line 2: "t" is 2, expected 1'):
        Recording(root).load_episode("run-0")


def test_a_corrupt_video_is_an_error_naming_it(handwritten_recording):
    root = handwritten_recording[0]
    path = root / "run-2.mp4"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(RecordingError, match=r"run-2\.mp4"):
        Recording(root).load_episode("run-2")


def test_an_unknown_episode_id_is_a_value_error(handwritten_recording):
    with pytest.raises(ValueError, match="'run-9' is not in"):
        Recording(handwritten_recording[0]).load_episode("run-9")


def test_a_copied_recording_loads_from_its_new_place(handwritten_recording, tmp_path):
    copy = shutil.copytree(handwritten_recording[0], tmp_path / "copy")
    assert len(Recording(copy)) == 3
