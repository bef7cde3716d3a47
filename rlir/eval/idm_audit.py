"""What an IDM reads: two probes that pull the player's avatar apart from the world, and an occlusion map.

Both probes are cut from real clips, and score only commanded moves that really moved the world (the verifier
calls the commanded scroll) and after which the avatar faced the move:
- **avatar only** (a counterfeit): the world stays at the clip's first frame, only the avatar's box is taken
  from the real later frames. Nothing moved, so an IDM that credits the move reads the avatar alone;
- **world only**: the real frames, with the avatar's box frozen at the first frame's, facing another way. The
  world moved, so an IDM that reads the world credits it whatever the avatar shows.

``occlusion_map`` greys one tile-sized patch at a time, in both frames of every transition, and records how much
the log-probability of the true action drops: where the IDM looks. Games other than Crafter pass their avatar's
box and a mask of the transitions to score.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import torch

from rlir.rewards import idm_logits

Box = Sequence[int]  # [top, left, height, width] in px of the videos


def crafter_avatar_box(frame_size: int) -> list[int]:
    """The player's tile in a Crafter frame (``crafter_verifier.PLAYER`` of the 9x7-tile world view)."""
    from rlir.envs.crafter_verifier import PLAYER

    unit = frame_size // 9
    return [PLAYER[0] * unit, PLAYER[1] * unit, unit, unit]


def _region(box: Box):
    top, left, height, width = box
    return slice(top, top + height), slice(left, left + width)


def avatar_only(videos: torch.Tensor, box: Box) -> torch.Tensor:
    """uint8 videos [K, T+1, 3, H, W] -> every frame the first one, with the avatar's box of the real frame."""
    rows, cols = _region(box)
    fake = videos[:, :1].expand_as(videos).clone()
    fake[..., rows, cols] = videos[..., rows, cols]
    return fake


def world_only(videos: torch.Tensor, box: Box) -> torch.Tensor:
    """uint8 videos [K, T+1, 3, H, W] -> the real frames with the avatar's box frozen at the first frame's."""
    rows, cols = _region(box)
    fake = videos.clone()
    fake[..., rows, cols] = videos[:, :1, ..., rows, cols]
    return fake


@torch.no_grad()
def credited(idm, videos: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> float:
    """Share of the transitions in ``mask`` [K, T] whose action (every head) the IDM recovers."""
    predicted = torch.stack([head.argmax(-1) for head in idm_logits(idm, videos)], dim=-1)
    hit = (predicted == actions).all(-1)
    return float(hit[mask].float().mean()) if mask.any() else float("nan")


def crafter_probe_mask(videos: torch.Tensor, actions: torch.Tensor, action_space) -> Dict[str, torch.Tensor]:
    """Transitions the probes score on Crafter clips: commanded moves that the verifier sees scroll the commanded
    way ("moved"), and of those, the ones whose first-frame avatar faces another way ("turned")."""
    from rlir.envs.crafter_verifier import CrafterVerifier, VideoJudge

    judge = VideoJudge(action_space)
    hits = judge.hits(videos, actions)
    moves = judge.move_indices(actions[..., 0].numpy())
    moved = torch.as_tensor(hits["scrolled_as_commanded"] & hits["faces_move"])
    verifier = CrafterVerifier(videos.shape[-1])
    first = verifier.tiles(videos[:, 0].permute(0, 2, 3, 1).numpy())
    first_facing = verifier.facing(first, verifier.daylight(first))
    turned = moved & torch.as_tensor(moves != first_facing[:, None])
    return {"moved": moved, "turned": turned}


def probe_scores(idm, videos: torch.Tensor, actions: torch.Tensor, masks: Dict[str, torch.Tensor],
                 box: Box) -> Dict[str, float]:
    """The IDM's credit on real moves, on avatar-only counterfeits of them and on world-only versions."""
    return {"real": credited(idm, videos, actions, masks["moved"]),
            "avatar_only": credited(idm, avatar_only(videos, box), actions, masks["moved"]),
            "world_only": credited(idm, world_only(videos, box), actions, masks["turned"]),
            "moves": int(masks["moved"].sum()), "turned_moves": int(masks["turned"].sum())}


@torch.no_grad()
def occlusion_map(idm, videos: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor, patch: int) -> np.ndarray:
    """[H // patch, W // patch]: the mean drop in log-probability of the true action over the transitions in
    ``mask`` when that patch is grey in every frame."""
    def true_logp(v):
        logits = idm_logits(idm, v)
        return sum(torch.log_softmax(head.float(), -1).gather(-1, actions[..., h:h + 1])[..., 0]
                   for h, head in enumerate(logits))[mask]

    base = true_logp(videos)
    rows, cols = videos.shape[-2] // patch, videos.shape[-1] // patch
    drop = np.zeros((rows, cols))
    for r in range(rows):
        for c in range(cols):
            occluded = videos.clone()
            occluded[..., r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] = 128
            drop[r, c] = float((base - true_logp(occluded)).mean())
    return drop


def plot_occlusion(maps: Dict[str, np.ndarray], frame: np.ndarray, path) -> None:
    """One panel per IDM: its occlusion map over a real frame [H, W, 3]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 3.8), squeeze=False)
    for ax, (name, drop) in zip(axes[0], maps.items()):
        ax.imshow(frame)
        ax.imshow(drop, cmap="magma", alpha=0.6, extent=(0, frame.shape[1], frame.shape[0], 0),
                  interpolation="nearest")
        ax.set_title(f"{'/'.join(Path(name).parts[-2:])}\nlog-prob drop (max {drop.max():.2f})", fontsize=8)
        ax.axis("off")
    figure.tight_layout(rect=(0, 0, 1, 0.94))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def audit(data, idms: Dict[str, object], *, box: Box | None = None, prompts: int = 64, frames: int = 15,
          all_episodes: bool = False, out=None) -> dict:
    """``rlir idm audit``: each IDM's frame accuracy on real held-out clips, its credit on the two probes
    (Crafter: the verifier picks the transitions) and its occlusion map; writes audit.json, audit.md and
    occlusion.png into ``out`` when given."""
    import json

    from rlir.data import Recording
    from rlir.eval.action_following import idm_scores
    from rlir.eval.evaluate import HeldOutPrompts
    from rlir.envs.crafter_verifier import VideoJudge
    from rlir.models.idm import InverseDynamicsModel

    recording = Recording(data)
    clips = HeldOutPrompts.from_recording(recording, prompts, frames, all_episodes)
    size = recording.frame_size
    crafter = VideoJudge.for_action_space(recording.action_space) is not None
    if box is None:
        if not crafter:
            raise ValueError("--avatar-box is needed for a game other than Crafter")
        box = crafter_avatar_box(size[0])
    masks = crafter_probe_mask(clips.real, clips.actions, recording.action_space) if crafter else None
    everything = torch.ones(clips.actions.shape[:2], dtype=torch.bool)
    result = {"data": str(recording.root), "prompts": len(clips), "frames": frames, "avatar_box": list(box),
              "idms": {}}
    maps = {}
    for name, path in idms.items():
        idm = InverseDynamicsModel.from_pretrained(path).float().eval()
        entry = {"path": str(path), "frame_accuracy": idm_scores(idm, clips.real, clips.actions,
                                                                  recording.action_space)["frame_accuracy"]}
        if masks is not None:
            entry.update(probe_scores(idm, clips.real, clips.actions, masks, box))
        maps[name] = occlusion_map(idm, clips.real, clips.actions, masks["moved"] if masks is not None else everything,
                                   patch=box[2])
        entry["occlusion_avatar_share"] = float(maps[name][box[0] // box[2], box[1] // box[3]] /
                                                max(maps[name].clip(min=0).sum(), 1e-9))
        result["idms"][name] = entry
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "audit.json").write_text(json.dumps(result, indent=1) + "\n")
        plot_occlusion(maps, clips.real[0, 0].permute(1, 2, 0).numpy(), out / "occlusion.png")
        (out / "audit.md").write_text(audit_markdown(result))
    return result


def audit_markdown(result: dict) -> str:
    rows = ["# IDM audit", "", f"{result['prompts']} real clips of {result['frames']} transitions from "
            f"`{result['data']}`; avatar box {result['avatar_box']} (top, left, height, width).", "",
            "| IDM | frame accuracy (real) | credit on real moves | avatar-only counterfeits | world-only (avatar "
            "frozen) | avatar's share of the occlusion map |", "|---|---:|---:|---:|---:|---:|"]
    cell = lambda v: "–" if v is None or v != v else f"{v:.3f}"
    for name, e in result["idms"].items():
        rows.append(f"| {name} | {cell(e['frame_accuracy'])} | {cell(e.get('real'))} | {cell(e.get('avatar_only'))}"
                    f" | {cell(e.get('world_only'))} | {cell(e['occlusion_avatar_share'])} |")
    rows += ["", "An IDM that credits avatar-only counterfeits reads the avatar, not the world: a world model can "
             "satisfy it by turning the avatar. One that credits world-only clips reads the world.", "",
             "![occlusion maps](occlusion.png)", ""]
    return "\n".join(rows)
