#!/usr/bin/env python
"""How much of a quickstart's eval-IDM gain is measurement noise? Per-video action-following on the 64x15 eval.

    scripts/eval_noise.py --data runs/c72/data runs/r6/FMP6B8_s0 runs/r6/FMP6B8_s2 [--out noise.json]

Generates the evaluation's videos (the same prompts, sampler and seed as ``rlir eval``) for the base world model
at seed 0 and at seed 1, and for each run's final checkpoint at seed 0, then scores every video with the eval IDM.
A run's delta is the mean of its 64 per-video differences to the base, so its standard error is their std / 8:
that is the noise of the figure the quickstart reports. The base at seed 1 gives the noise of an unpaired draw.
"""
import argparse
import json
from pathlib import Path

import torch

from rlir.data import Recording
from rlir.eval.generation import generate_videos
from rlir.eval.evaluate import HeldOutPrompts
from rlir.grpo.trained_world_model import load_world_model
from rlir.commands.eval import resolve_models
from rlir.models.loading import load_strict
from rlir.kernels import idm_reward
from rlir.models.idm import InverseDynamicsModel
from rlir.models.tokenizer import VQTokenizer
from rlir.rewards import idm_logits


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="quickstart or rlir train output folders")
    parser.add_argument("--data", required=True, help="the recording the runs were evaluated on")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--frames", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None, help="also write the per-video accuracies here (JSON)")
    args = parser.parse_args(argv)

    models, paths = resolve_models(run=args.runs[0])  # the base and the scoring models of the first run
    vq = load_strict(VQTokenizer, paths["tokenizer"], "tokenizer").eval()
    idm = load_strict(InverseDynamicsModel, paths["eval_idm"], "eval_idm").eval()
    prompts = HeldOutPrompts.from_recording(Recording(args.data, frame_size=vq.frame_size), args.prompts, args.frames)
    jobs = [("base, seed 0", models["before"], 0), ("base, seed 1", models["before"], 1)]
    jobs += [(str(run), run, 0) for run in args.runs]  # a run folder loads as its last checkpoint
    per_video = {}
    for label, path, seed in jobs:
        model, _ = load_world_model(path, "world model")
        with torch.no_grad():
            videos = generate_videos(model, vq, prompts.real[:, 0], prompts.actions, seed=seed)
            per_video[label] = idm_reward(idm_logits(idm, videos), prompts.actions).frame_match.float().mean(1)
        print(f"{label}: eval-IDM action-following {per_video[label].mean():.4f}", flush=True)

    base = per_video["base, seed 0"]
    print(f"\nper-video std {base.std():.3f}: a {len(base)}-video mean has a standard error of "
          f"{100 * base.std() / len(base) ** 0.5:.2f} points")
    for label, acc in list(per_video.items())[1:]:
        diff = acc - base
        corr = torch.corrcoef(torch.stack([acc, base]))[0, 1].item()
        error = 100 * diff.std() / len(diff) ** 0.5
        print(f"{label}: delta {100 * diff.mean():+.2f} points, standard error {error:.2f} "
              f"(per-video correlation with the base {corr:.2f})")
    result = {k: v.tolist() for k, v in per_video.items()}
    if args.out is not None:
        args.out.write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
