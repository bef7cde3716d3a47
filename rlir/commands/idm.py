"""`rlir idm audit`: what each IDM reads. Its frame accuracy on real clips, how often it credits avatar-only
counterfeits (the world still, the avatar turned) and world-only clips (the world moved, the avatar frozen), and
an occlusion map of where it looks (``rlir.eval.idm_audit``).

    rlir idm audit --data data/crafter                     # the shipped reward and evaluation IDMs
    rlir idm audit --data DIR --idm A --idm B --avatar-box 24 32 8 8 --out runs/audit
"""
from __future__ import annotations

import sys
from pathlib import Path

from rlir.commands.eval import SHIPPED


def register(subparsers) -> None:
    parser = subparsers.add_parser("idm", help="audit what an IDM reads (counterfeit probes, occlusion map)",
                                   description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="idm_command", metavar="SUBCOMMAND", required=True)
    audit = sub.add_parser("audit", help="probe and occlusion-map IDMs on real clips")
    audit.add_argument("--data", type=Path, required=True, help="a recording folder (its held-out episodes)")
    audit.add_argument("--idm", type=Path, action="append", default=None,
                       help=f"an IDM directory; repeatable (default: {SHIPPED / 'idm'} and {SHIPPED / 'eval_idm'})")
    audit.add_argument("--avatar-box", type=int, nargs=4, default=None, metavar=("TOP", "LEFT", "HEIGHT", "WIDTH"),
                       help="where the avatar is drawn, in px of the recording (default on Crafter: the player's "
                            "tile)")
    audit.add_argument("--prompts", type=int, default=64, help="real clips (default 64)")
    audit.add_argument("--frames", type=int, default=15, help="transitions per clip (default 15)")
    audit.add_argument("--all-episodes", action="store_true", help="clips from every episode, not the held-out split")
    audit.add_argument("--out", type=Path, default=None, help="write audit.json, audit.md and occlusion.png here")
    audit.set_defaults(func=run)


def run(args) -> int:
    from rlir.assets import resolve
    from rlir.eval.idm_audit import audit

    paths = args.idm or [SHIPPED / "idm", SHIPPED / "eval_idm"]
    names = ["reward_idm", "eval_idm"] if args.idm is None else [str(p) for p in paths]
    try:
        if args.prompts < 1 or args.frames < 1:
            raise ValueError("--prompts and --frames must be >= 1")
        result = audit(args.data, {n: resolve(p) for n, p in zip(names, paths)}, box=args.avatar_box,
                       prompts=args.prompts, frames=args.frames, all_episodes=args.all_episodes, out=args.out)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"rlir idm audit: error: {error}", file=sys.stderr)
        return 2
    for name, e in result["idms"].items():
        print(f"{name}: frame accuracy {e['frame_accuracy']:.3f}; credit on real moves {e.get('real', float('nan')):.3f}, "
              f"avatar-only counterfeits {e.get('avatar_only', float('nan')):.3f}, world-only "
              f"{e.get('world_only', float('nan')):.3f}")
    if args.out is not None:
        print(f"report: {args.out / 'audit.md'} (and audit.json, occlusion.png)")
    return 0
