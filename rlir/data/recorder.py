"""Record episodes of a real game into the recording layout (rlir.data.layout).

Episode i is played with seed ``seed + i`` for both the world and the random policy, so a recording
is a deterministic function of its arguments. Each episode is written under temporary names and
renamed into place only once complete, then the manifest is rewritten atomically; an interrupted
run leaves complete episodes and a valid manifest, and rerunning the same command resumes it.
An episode ends after ``steps`` actions, or earlier if the player dies (its "frames" entry says so).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from rlir.data.actions import action_line
from rlir.data.layout import (
    EpisodeInfo,
    Manifest,
    RecordingError,
    actions_path,
    episode_id,
    manifest_path,
    read_manifest,
    replace_atomically,
    video_path,
    write_manifest,
)
from rlir.data.recording import Recording
from rlir.data.video import LOSSLESS_CODEC, LOSSY_CODEC, VideoWriter
from rlir.envs.registry import (RECORDABLE_ENVS, RECORDING_FPS, RECORDING_SIZE, get_action_space, make_env,
                                make_recording_policy)


def record(
    env: str,
    out: Path | str,
    episodes: int,
    steps: int,
    seed: int = 0,
    lossless: bool = False,
    size: int = RECORDING_SIZE,
    fps: float = RECORDING_FPS,
    progress: bool = True,
) -> Recording:
    """Record ``episodes`` episodes of up to ``steps`` actions each into ``out``; returns the recording."""
    for name, value in (("episodes", episodes), ("steps", steps), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if env not in RECORDABLE_ENVS:
        raise ValueError(f"env {env!r} cannot be recorded here; recordable envs: {sorted(RECORDABLE_ENVS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "policy": "movement_heavy/1",  # bump when the policy changes: resuming must not mix policies
        "steps": steps,
        "seed": seed,
        "codec": (LOSSLESS_CODEC if lossless else LOSSY_CODEC)[0],
    }
    wanted = Manifest(env, fps, (size, size), get_action_space(env), episodes=[], extra={"recorder": settings})
    manifest = _resume(out, wanted)
    completed = {e.id for e in manifest.episodes}
    with tqdm(total=episodes * steps, unit="step", desc=f"record {env}", disable=not progress) as bar:
        for index in range(episodes):
            if episode_id(index) in completed:
                bar.update(steps)
                continue
            bar.set_postfix_str(episode_id(index))
            info = record_episode(env, out, episode_id(index), seed + index, steps, size, fps, lossless, bar.update)
            bar.update(steps - (info.frames - 1))  # an episode cut short by the player's death
            manifest.episodes.append(info)
            manifest.episodes.sort(key=lambda e: e.id)
            write_manifest(out, manifest)
    return Recording(out)


def record_episode(
    env_name: str,
    out: Path,
    episode: str,
    seed: int,
    steps: int,
    size: int,
    fps: float,
    lossless: bool,
    on_step: Callable[[int], object] = lambda n: None,
) -> EpisodeInfo:
    """Play one episode and write <episode>.mp4 and <episode>.jsonl into ``out``, each appearing only when complete."""
    env = make_env(env_name, seed=seed, size=size)
    policy = make_recording_policy(env_name, env.action_space, seed=seed)
    temporary_video = out / f".{episode}.tmp.mp4"
    temporary_actions = out / f".{episode}.tmp.jsonl"
    try:
        with VideoWriter(temporary_video, (size, size), fps, lossless) as video, open(
            temporary_actions, "w", encoding="utf-8"
        ) as actions:
            video.append(env.reset())
            for t in range(steps):
                action = policy()
                frame, died = env.step(action)
                video.append(frame)
                actions.write(action_line(t, action))
                on_step(1)
                if died:
                    break
            frames = video.frames_written
        replace_atomically(temporary_video, video_path(out, episode))
        replace_atomically(temporary_actions, actions_path(out, episode))
    finally:
        temporary_video.unlink(missing_ok=True)
        temporary_actions.unlink(missing_ok=True)
    return EpisodeInfo(episode, frames=frames, seed=seed)


def _resume(out: Path, wanted: Manifest) -> Manifest:
    """The manifest to extend: ``wanted`` for a new directory, the existing one if its settings match."""
    if not manifest_path(out).exists():
        return wanted
    existing = read_manifest(out)
    for key, old, new in (
        ("env", existing.env, wanted.env),
        ("fps", existing.fps, wanted.fps),
        ("frame_size", existing.frame_size, wanted.frame_size),
        ("action_space", existing.action_space, wanted.action_space),
        ("recorder", existing.extra.get("recorder"), wanted.extra["recorder"]),
    ):
        if old != new:
            raise RecordingError(
                f"{manifest_path(out)}: this directory holds a recording with different settings "
                f"({key}: {old!r} there, {new!r} now); record into a new --out directory"
            )
    return existing
