"""Episode videos: write RGB frames to mp4 and read them back as uint8 arrays (ffmpeg via imageio-ffmpeg)."""
from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch
import torch.nn.functional as F

from rlir.data.layout import RecordingError

# (codec, pixel format, extra ffmpeg output options).
# Lossless: H.264 in RGB at qp 0 round-trips every pixel exactly, still in an .mp4.
# Default: H.264 4:4:4 at crf 12; 4:2:0 chroma subsampling would smear Crafter's 7-pixel tiles.
LOSSLESS_CODEC = ("libx264rgb", "rgb24", ["-qp", "0"])
LOSSY_CODEC = ("libx264", "yuv444p", ["-crf", "12"])


class VideoWriter:
    """Streams uint8 [height, width, 3] frames into an mp4; use as a context manager."""

    def __init__(self, path: Path | str, frame_size: tuple[int, int], fps: float, lossless: bool = False):
        codec, pix_fmt, options = LOSSLESS_CODEC if lossless else LOSSY_CODEC
        self.path = Path(path)
        self.frame_size = tuple(frame_size)
        self.frames_written = 0
        height, width = self.frame_size
        self._ffmpeg = imageio_ffmpeg.write_frames(
            str(self.path), (width, height), fps=fps, codec=codec, pix_fmt_out=pix_fmt,
            quality=None, macro_block_size=1, ffmpeg_log_level="error",
            output_params=["-f", "mp4", *options],  # explicit: the path may have a temporary suffix
        )
        self._ffmpeg.send(None)

    def append(self, frame: np.ndarray) -> None:
        expected = (*self.frame_size, 3)
        if frame.shape != expected or frame.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 {expected}, got {frame.dtype} {frame.shape}")
        self._ffmpeg.send(np.ascontiguousarray(frame))
        self.frames_written += 1

    def close(self) -> None:
        self._ffmpeg.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_video(path: Path | str, frame_size: tuple[int, int] | None = None) -> np.ndarray:
    """All frames of a video as uint8 [frames, height, width, 3] (RGB), at their stored size or resized to
    ``frame_size`` (height, width). Frames are resized as they are decoded, so a long high-resolution
    video (e.g. Minecraft at 640x360) never sits in memory at full size."""
    path = Path(path)
    if not path.is_file():
        raise RecordingError(f"{path}: video file not found")
    try:
        # passthrough: one output frame per stored frame, even for variable-frame-rate videos.
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24", output_params=["-fps_mode", "passthrough"])
        meta = next(reader)
        width, height = meta["size"]
        frames = []
        for buffer in reader:
            frame = np.frombuffer(buffer, dtype=np.uint8).reshape(1, height, width, 3)
            frames.append(frame if frame_size is None else resize_frames(frame, frame_size))
    except (OSError, RuntimeError, StopIteration, ValueError) as error:
        last_line = (str(error).strip().splitlines() or [type(error).__name__])[-1]
        raise RecordingError(f"{path}: cannot decode video ({last_line})") from None
    if not frames:
        raise RecordingError(f"{path}: the video has no frames")
    return np.concatenate(frames)


def resize_frames(frames: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """uint8 [N, H, W, 3] -> uint8 [N, height, width, 3]; bilinear with antialiasing, a no-op at the same size."""
    height, width = frame_size
    if frames.shape[1:3] == (height, width):
        return frames
    x = torch.tensor(frames).permute(0, 3, 1, 2).float()  # a copy: decoded frames are read-only buffers
    x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
