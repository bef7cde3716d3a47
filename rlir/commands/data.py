"""`rlir data record` and `rlir data check`: make recordings of real games and validate any recording."""
from __future__ import annotations

import argparse
import sys

from rlir.envs.registry import RECORDABLE_ENVS, RECORDING_FPS, RECORDING_SIZE


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="record and check recordings (frames mp4 + actions jsonl)")
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    rec = commands.add_parser(
        "record",
        help="record episodes of a game with a movement-heavy random policy",
        description="Record episodes into OUT (manifest.json, <id>.mp4, <id>.jsonl). Episode i uses seed "
        "SEED+i for the world and the policy. Rerunning the same command resumes an interrupted recording.",
    )
    rec.add_argument("--env", required=True, choices=sorted(RECORDABLE_ENVS), help="the game to record")
    rec.add_argument("--episodes", type=int, required=True, help="number of episodes")
    rec.add_argument("--steps", type=int, required=True, help="actions per episode (fewer if the player dies)")
    rec.add_argument("--seed", type=int, default=0, help="seed of episode 0 (default: 0)")
    rec.add_argument("--out", required=True, help="output directory")
    rec.add_argument("--lossless", action="store_true", help="lossless H.264 RGB (about 4x larger files)")
    rec.add_argument("--size", type=int, default=RECORDING_SIZE,
                     help=f"frame height and width in pixels (default: {RECORDING_SIZE}, one 8-px code a Crafter tile)")
    rec.add_argument("--fps", type=float, default=RECORDING_FPS, help=f"video frame rate (default: {RECORDING_FPS})")
    rec.add_argument("--quiet", action="store_true", help="no progress bar")
    rec.set_defaults(func=_record)

    check = commands.add_parser(
        "check", help="validate a recording: decode every episode and check frame and action counts"
    )
    check.add_argument("dir", help="recording directory (holds manifest.json)")
    check.set_defaults(func=_check)


def _record(args: argparse.Namespace) -> int:
    # rlir.data imports torch: import it only when a data command runs, so `rlir --help` stays fast.
    from rlir.data.recorder import record

    try:
        recording = record(
            args.env, args.out, episodes=args.episodes, steps=args.steps, seed=args.seed,
            lossless=args.lossless, size=args.size, fps=args.fps, progress=not args.quiet,
        )
    except ValueError as error:  # bad arguments, or OUT holds a recording made with other settings
        print(f"rlir data record: error: {error}", file=sys.stderr)
        return 1
    transitions = sum(e.frames - 1 for e in recording.episodes)
    print(f"{recording.root}: {len(recording)} episodes, {transitions} transitions")
    return 0


def _check(args: argparse.Namespace) -> int:
    from rlir.data.layout import RecordingError
    from rlir.data.recording import Recording

    try:
        recording = Recording(args.dir, cache=False)
        transitions = sum(len(recording.load_episode(episode)[1]) for episode in recording.episode_ids)
    except RecordingError as error:
        print(f"rlir data check: {error}", file=sys.stderr)
        return 1
    print(f"{recording.root}: OK, env {recording.env}, {len(recording)} episodes, {transitions} transitions, "
          f"frame_size {list(recording.frame_size)}, action heads {recording.action_space.head_sizes}")
    return 0
