"""`rlir eval`: action-following and visual quality of an AR world model on held-out prompts.

Each held-out prompt is a real first frame plus the next ``--frames`` real commanded actions. The world model
generates the frames; the evaluation IDM (never seen by the reward) and the reward IDM read the actions back;
PSNR compares the generated frames with the real continuation. The same IDMs on the real frames give the
ceiling. Writes a JSON report and prints a summary.
"""
from __future__ import annotations

import json
from pathlib import Path

CHECKPOINTS = Path("checkpoints/crafter")


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="action-following (eval IDM) and PSNR of a world model")
    parser.add_argument("--world-model", type=Path, default=CHECKPOINTS / "ar_world_model")
    parser.add_argument("--tokenizer", type=Path, default=CHECKPOINTS / "tokenizer")
    parser.add_argument("--idm", type=Path, default=CHECKPOINTS / "idm", help="the reward IDM")
    parser.add_argument("--eval-idm", type=Path, default=CHECKPOINTS / "eval_idm", help="the held-out IDM")
    parser.add_argument("--data", type=Path, required=True, help="a recording folder (its held-out episodes)")
    parser.add_argument("--frames", type=int, default=15, help="generated frames per prompt (default 15)")
    parser.add_argument("--prompts", type=int, default=64, help="held-out prompts (default 64)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="report JSON (default: print only)")
    parser.set_defaults(func=run)


def run(args) -> int:
    import torch

    from rlir.data import ClipDataset, Recording
    from rlir.eval.action_following import generate_videos, idm_scores
    from rlir.metrics import format_report
    from rlir.models.ar_world_model import ARWorldModel
    from rlir.models.idm import InverseDynamicsModel
    from rlir.models.tokenizer import VQTokenizer
    from rlir.metrics.image import psnr

    if args.frames < 1 or args.prompts < 1:
        raise SystemExit("rlir eval: error: --frames and --prompts must be >= 1")
    recording = Recording(args.data)
    clips = ClipDataset(recording, split="heldout", context_frames=1, clip_frames=args.frames)
    if len(clips) == 0:
        raise SystemExit(f"rlir eval: error: --data {args.data} has no held-out clip of {args.frames + 1} frames")
    step = max(1, len(clips) // args.prompts)
    items = [clips[i] for i in range(0, len(clips), step)][: args.prompts]
    first = torch.stack([torch.as_tensor(it["context"][0]) for it in items])
    real = torch.stack([torch.cat([torch.as_tensor(it["context"]), torch.as_tensor(it["target"])]) for it in items])
    actions = torch.stack([torch.as_tensor(it["actions"]) for it in items])

    tokenizer = VQTokenizer.from_pretrained(args.tokenizer).eval()
    world_model = ARWorldModel.from_pretrained(args.world_model).eval()
    idms = {"eval_idm": InverseDynamicsModel.from_pretrained(args.eval_idm).eval(),
            "reward_idm": InverseDynamicsModel.from_pretrained(args.idm).eval()}
    generated = generate_videos(world_model, tokenizer, first, actions, temperature=args.temperature, seed=args.seed)

    report = {"prompts": len(items), "frames": args.frames, "temperature": args.temperature,
              "world_model": str(args.world_model),
              "psnr_db": psnr(real[:, 1:].flatten(0, 1), generated[:, 1:].flatten(0, 1)).mean().item()}
    for name, idm in idms.items():
        for source, videos in (("generated", generated), ("real", real)):
            scores = idm_scores(idm, videos, actions, recording.action_space)
            report[f"{name}_{source}_frame_accuracy"] = scores["frame_accuracy"]
            if name == "eval_idm" and source == "generated":
                report["eval_idm_generated_report"] = scores["report"].to_json()
                print(format_report(scores["report"]))
    summary = {k: round(v, 4) for k, v in report.items() if isinstance(v, float)}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(args.out)
    return 0
