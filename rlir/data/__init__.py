"""Real data: record games into the recording layout, read recordings, cut them into clips."""
from rlir.data.clips import ClipDataset, split_episodes
from rlir.data.layout import FORMAT, EpisodeInfo, Manifest, RecordingError, read_manifest, write_manifest
from rlir.data.recorder import record
from rlir.data.recording import Recording
from rlir.data.video import VideoWriter, read_video, resize_frames

__all__ = [
    "FORMAT",
    "ClipDataset",
    "EpisodeInfo",
    "Manifest",
    "Recording",
    "RecordingError",
    "read_manifest",
    "record",
    "read_video",
    "resize_frames",
    "split_episodes",
    "VideoWriter",
    "write_manifest",
]
