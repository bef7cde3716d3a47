"""Action-following of a world model: the paper's headline metric.

From held-out prompts (the real first frame and the real commanded actions), the world model generates the
next frames; an IDM reads the generated video back into actions. Action-following is the per-frame accuracy
of the recovered actions against the commanded ones, with precision / recall / F1 per action (MineWorld's
report). Use the *evaluation* IDM, which the reward never saw, for honest numbers; the reward IDM's score is
reported beside it. The same IDMs on the real continuation give the ceiling.

Both world-model families generate here: the AR model samples codes that the tokenizer decodes; the diffusion
model (``DiTWorldModel``) integrates each frame with the ODE sampler (``sample_steps`` Euler steps of
diffusers' FlowMatchEulerDiscreteScheduler) in its frame space and decodes it (through the tokenizer's decoder
for tokenizer latents).
"""
from __future__ import annotations

from typing import Dict, Optional, Union

import torch

from rlir.kernels import idm_reward
from rlir.metrics import classification_report
from rlir.models.ar_world_model import ARWorldModel
from rlir.models.dit_world_model import DiTWorldModel
from rlir.models.flow_sampling import generate as generate_flow
from rlir.models.idm import InverseDynamicsModel
from rlir.models.sampling import generate
from rlir.models.tokenizer import VQTokenizer


WorldModel = Union[ARWorldModel, DiTWorldModel]


@torch.no_grad()
def generate_videos(world_model: WorldModel, tokenizer: VQTokenizer, first_frames: torch.Tensor,
                    actions: torch.Tensor, *, temperature: float = 1.0, top_k: Optional[int] = None,
                    seed: int = 0, batch: int = 64, sample_steps: int = 16) -> torch.Tensor:
    """uint8 first frames [K, 3, S, S] + actions [K, n, H] -> uint8 videos [K, n + 1, 3, S, S] whose frame 0
    is the real first frame and frames 1..n are generated. temperature and top_k apply to the AR model,
    sample_steps (ODE steps per frame) to the diffusion model. On the shipped Crafter DiT (64 prompts x 15
    frames) 4, 8, 16 and 32 steps give eval-IDM action-following 0.326, 0.352, 0.372, 0.377 and PSNR 16.5,
    17.6, 18.4, 18.7 dB: 16 is the default."""
    generator = torch.Generator().manual_seed(seed)
    videos = []
    for i in range(0, len(first_frames), batch):
        first, commanded = first_frames[i:i + batch], actions[i:i + batch]
        if isinstance(world_model, DiTWorldModel):
            context = world_model.encode_frames(first[:, None], tokenizer)
            sample = generate_flow(world_model, context, commanded.to(context.device), num_steps=sample_steps,
                                   generator=generator)
            generated = world_model.decode_frames(sample.frames, tokenizer).cpu()
        else:
            context = tokenizer.encode(first).flatten(1)
            codes, _ = generate(world_model, context, commanded, temperature=temperature, top_k=top_k,
                                generator=generator)
            generated = tokenizer.decode_tokens(codes)
        videos.append(torch.cat([first[:, None], generated], dim=1))
    return torch.cat(videos)


@torch.no_grad()
def idm_scores(idm: InverseDynamicsModel, videos: torch.Tensor, actions: torch.Tensor, action_space,
               batch: int = 32) -> Dict[str, object]:
    """How well ``idm`` recovers the commanded actions [K, n, H] from uint8 videos [K, n + 1, 3, S, S]:
    exact-match frame accuracy (the reward), per-head accuracy, and the per-action ClassificationReport."""
    logits = [torch.cat(parts) for parts in zip(*(idm(videos[i:i + batch]) for i in range(0, len(videos), batch)))]
    result = idm_reward(logits, actions)
    predicted = torch.stack([head.argmax(-1) for head in logits], dim=-1)
    report = classification_report(actions.reshape(-1, actions.shape[-1]), predicted.reshape(-1, actions.shape[-1]),
                                   action_space)
    return {"frame_accuracy": result.reward.mean().item(),
            "head_accuracy": result.head_accuracy.tolist(),
            "report": report}
