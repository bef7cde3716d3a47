"""`rlir pretrain world-model --kind diffusion`: train the frame-causal DiT world model with flow matching.

Every frame of the recording is put into the model's frame space once (``--frame-space``: the VQ tokenizer's
continuous latents, normalised to unit variance over the train frames, or pixels). Training draws random clips
of ``--clip-frames`` frames from the train episodes; the first ``--context-frames`` stay clean and every other
frame gets its own noise level (``DiTWorldModel.loss``). AdamW, warm-up then cosine learning rate, gradient
clipping, and an exponential moving average of the weights, which is what is evaluated and saved. Writes OUT
(built in a temporary sibling directory and renamed into place only when complete):

    config.json, diffusion_pytorch_model.safetensors   the EMA model: DiTWorldModel.from_pretrained(OUT)
    metrics.jsonl        training metrics every --log-every steps (and held-out loss every --eval-every)
    metrics.json         held-out evaluation of the saved checkpoint and the run's settings
    generations.png      held-out prompts: real, then ODE-sampled continuations, one row each

The held-out loss is the flow-matching loss of every held-out clip with fixed noise and sigmas (a seeded
generator), so values at different steps compare. Generation quality (``rlir.pretrain.world_model_eval``) is the
PSNR of continuations of held-out prompts from the policy's evaluation sampler (the ODE, ``--sample-steps`` Euler
steps a frame) against the real frames, beside copying the context frame and the frame space's own round trip
(the ceiling).

The defaults (tokenizer latents in 2x2 patches, 4-frame clips) are the winners of the comparisons logged in
docs/experiments.md; the shipped 72x72 DiT overrides the patch size (configs/pretrain/crafter_dit_world_model.yaml).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from rlir.data import Recording, resize_frames
from rlir.models.dit_world_model import DiTWorldModel, latents_from_tokenizer
from rlir.models.tokenizer import VQTokenizer
from rlir.optim import adamw_decaying_matrices
from rlir.policies import evaluation_policy
from rlir.pretrain.common import (check_output_directory, clip_windows, first_stage, heldout_split, load_tokenizer,
                                  shuffled_batches)
from rlir.pretrain.config import DiffusionWorldModelPretrain, set_threads, settings
from rlir.pretrain.loop import Target, Trained, pretrain, checkpoint_summary
from rlir.pretrain.world_model_eval import generation_quality, real_frames, save_videos

GRAD_CLIP = 1.0
WEIGHT_DECAY = 0.0
EMA_DECAY = 0.999
VALIDATION_SEED = 1234
GENERATION_BATCH = 16  # held-out prompts per generate call, which bounds the sampler's memory
DEFAULT_PATCH = {"tokenizer_latents": 2, "pixels": 8}


@dataclass
class FrameStore:
    """Every frame of some episodes in the model's frame space, and the actions between them.

    frames[e]: fp32 [T, C, S, S] (latents) or uint8 [T, 3, H, W] (pixels: scaled per batch, 4x less memory).
    """

    frames: dict[str, torch.Tensor]
    actions: dict[str, torch.Tensor]

    @classmethod
    @torch.no_grad()
    def build(cls, recording: Recording, episode_ids: list[str], frame_space: str,
              tokenizer: Optional[VQTokenizer], batch: int = 256) -> "FrameStore":
        frames, actions = {}, {}
        for episode in episode_ids:
            pixels, episode_actions = recording.load_episode(episode)
            if frame_space == "tokenizer_latents":
                pixels = torch.from_numpy(resize_frames(pixels, tokenizer.frame_size).copy()).permute(0, 3, 1, 2)
                frames[episode] = torch.cat([latents_from_tokenizer(tokenizer, pixels[i:i + batch]).cpu()
                                             for i in range(0, len(pixels), batch)])
            else:
                frames[episode] = torch.from_numpy(pixels.copy()).permute(0, 3, 1, 2).contiguous()
            actions[episode] = torch.from_numpy(episode_actions.copy()).long()
        return cls(frames, actions)

    def windows(self, episode_ids: list[str], length: int, stride: int) -> list[tuple[str, int]]:
        return [(e, s) for e in episode_ids for s in range(0, len(self.frames[e]) - length + 1, stride)]

    def clips(self, windows: list[tuple[str, int]], length: int, model: DiTWorldModel) -> tuple[torch.Tensor, torch.Tensor]:
        """(model-space frames fp32 [N, length, C, S, S], actions int64 [N, length - 1, H]) of the windows."""
        frames = torch.stack([self.frames[e][s:s + length] for e, s in windows])
        if frames.dtype == torch.uint8:
            frames = model.encode_frames(frames)
        else:
            frames = (frames - model.config.latent_shift) * model.config.latent_scale
        return frames, torch.stack([self.actions[e][s:s + length - 1] for e, s in windows])


def fitting_patch_size(grid, requested: Optional[int], default: int) -> int:
    """The patch side: ``requested`` if it divides both sides of the frame grid; with none requested, the largest
    side up to ``default`` that does, so a default fits any recording."""
    fits = [p for p in range(max(requested or default, 1), 0, -1) if all(side % p == 0 for side in grid)]
    if requested is not None and fits[0] != requested:
        raise ValueError(f"patch_size: {requested} does not divide the frame grid {list(grid)}; {fits[0]} does")
    return fits[0]


def _model_config(frame_space: str, grid, patch_size: int, recording: Recording, tokenizer, store: FrameStore,
                  train_ids: list[str], shape: dict) -> dict:
    heads = list(recording.action_space.head_sizes)
    if frame_space == "pixels":
        return dict(in_channels=3, frame_size=list(grid), patch_size=patch_size, action_head_sizes=heads,
                    frame_space="pixels", **shape)
    latents = torch.cat([store.frames[e] for e in train_ids])
    return dict(in_channels=tokenizer.config.code_dim, frame_size=list(grid), patch_size=patch_size,
                action_head_sizes=heads, frame_space="tokenizer_latents", latent_shift=latents.mean().item(),
                latent_scale=1 / latents.std().item(), **shape)


@torch.no_grad()
def _update_ema(ema: DiTWorldModel, model: DiTWorldModel, step: int) -> None:
    """Move the averaged weights towards the current ones; the decay warms up, so the early average is not
    dominated by the initial weights."""
    decay = min(EMA_DECAY, (1 + step) / (10 + step))
    for averaged, current in zip(ema.parameters(), model.parameters()):
        averaged.lerp_(current, 1 - decay)


@torch.no_grad()
def heldout_loss(model: DiTWorldModel, frames: torch.Tensor, actions: torch.Tensor, n_context: int,
                 batch: int = 16) -> float:
    """Mean flow-matching loss of held-out clips with the same noise and sigmas at every call."""
    generator = torch.Generator().manual_seed(VALIDATION_SEED)
    total = 0.0
    for i in range(0, len(frames), batch):
        part = frames[i:i + batch]
        total += model.loss(part, actions[i:i + batch], n_context, generator).item() * len(part)
    return total / len(frames)


def train(data: Path | str, out: Path | str, tokenizer: Path | str | None = None, *, progress: bool = True,
          **options) -> dict:
    """Train a DiTWorldModel on the train episodes of ``data``, save its EMA weights into ``out`` and return
    the held-out metrics written to ``out``/metrics.json (see the module docstring). ``options``: the settings
    of ``DiffusionWorldModelPretrain``."""
    s = settings(DiffusionWorldModelPretrain, data=data, out=out, tokenizer=tokenizer, **options)
    set_threads(s.threads)
    check_output_directory(Path(out), s.overwrite)
    shape = dict(n_layers=s.layers, d_model=s.d_model, n_heads=s.heads, max_frames=s.max_frames,
                 previous_frame_neighbourhood=s.previous_frame_neighbourhood)
    DiTWorldModel(in_channels=1, frame_size=1, patch_size=1, **shape)  # bad shapes raise now
    return pretrain(DiTWorldModelTraining(s, shape), Path(out), overwrite=s.overwrite, steps=s.steps,
                    log_every=s.log_every, eval_every=s.eval_every, dtype=s.dtype,
                    description="pretrain world-model (diffusion)", progress=progress and not s.quiet)


class DiTWorldModelTraining(Target):
    """The DiT, its moving average (what is validated and saved), its optimiser and the recording in the model's
    frame space: train clips, held-out clips and prompts."""

    grad_clip = GRAD_CLIP
    progress_fields = {"loss": ("loss", ".4f"), "heldout_loss": ("heldout", ".4f")}

    def __init__(self, s: DiffusionWorldModelPretrain, shape: dict):
        self.cfg = s
        self.recording = recording = Recording(s.data)
        self.vq = vq = load_tokenizer(s.tokenizer) if s.frame_space == "tokenizer_latents" else None
        grid = recording.frame_size if s.frame_space == "pixels" else vq.code_grid
        patch_size = fitting_patch_size(grid, s.patch_size, DEFAULT_PATCH[s.frame_space])
        self.train_ids, self.heldout_ids = heldout_split(recording, s.heldout_fraction)
        started = time.perf_counter()
        self.store = store = FrameStore.build(recording, recording.episode_ids, s.frame_space, vq)
        self.encode_seconds = time.perf_counter() - started
        self.train_windows, heldout_windows, self.prompt_windows = clip_windows(
            store, recording, self.train_ids, self.heldout_ids, s.clip_frames, s.eval_frames + 1, s.eval_prompts)

        torch.manual_seed(s.seed)
        if s.init is None:
            self.model = DiTWorldModel(**_model_config(s.frame_space, grid, patch_size, recording, vq, store,
                                                       self.train_ids, shape))
        else:
            self.model = first_stage(DiTWorldModel, s.init, s.clip_frames, frame_space=s.frame_space)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optimizer = adamw_decaying_matrices(self.model.parameters(), lr=s.lr, weight_decay=WEIGHT_DECAY,
                                                 betas=(0.9, 0.99))
        self.batches = shuffled_batches(len(self.train_windows), s.batch, torch.Generator().manual_seed(s.seed))
        self.noise_generator = torch.Generator().manual_seed(s.seed + 1)
        self.heldout_frames, self.heldout_actions = store.clips(heldout_windows, s.clip_frames, self.model)
        self.throughput = ("frames_per_second", s.batch * (s.clip_frames - s.context_frames))

    def loss(self):
        s = self.cfg
        windows = [self.train_windows[i] for i in next(self.batches).tolist()]
        frames, actions = self.store.clips(windows, s.clip_frames, self.model)
        return self.model.loss(frames, actions, s.context_frames, self.noise_generator), lambda: {}

    def after_step(self, step: int) -> None:
        _update_ema(self.ema, self.model, step)

    def validate(self) -> dict:
        return {"heldout_loss": heldout_loss(self.ema, self.heldout_frames, self.heldout_actions,
                                             self.cfg.context_frames)}

    def weights(self) -> DiTWorldModel:
        return self.ema

    def report(self, staging: Path, saved: DiTWorldModel, trained: Trained) -> dict:
        s, vq, recording = self.cfg, self.vq, self.recording
        size = vq.frame_size if vq is not None else recording.frame_size
        prompts = real_frames(recording, self.prompt_windows, s.eval_frames + 1, size)
        prompt_actions = torch.stack([self.store.actions[e][i:i + s.eval_frames] for e, i in self.prompt_windows])
        ceiling = saved.decode_frames(saved.encode_frames(prompts[:, 1:], vq), vq)
        generation, videos = generation_quality({"ode": evaluation_policy(saved, vq, eval_steps=s.sample_steps)},
                                                prompts, prompt_actions, ("frame_space_ceiling", ceiling), seed=s.seed,
                                                batch=GENERATION_BATCH)
        generation["sample_steps"] = s.sample_steps
        save_videos(staging / "generations.png", videos)
        metrics = {
            "kind": "diffusion",
            "model": checkpoint_summary(saved, staging, s.dtype),
            "training": {"data": str(recording.root),
                         "tokenizer": str(Path(s.tokenizer).resolve()) if vq is not None else None,
                         "steps": s.steps, "batch": s.batch, "lr": s.lr, "clip_frames": s.clip_frames,
                         "context_frames": s.context_frames, "ema_decay": EMA_DECAY, "seed": s.seed, "init": s.init,
                         "seconds": round(trained.seconds, 1), "encode_seconds": round(self.encode_seconds, 1),
                         "final_loss": trained.final_loss, "train_episodes": self.train_ids,
                         "train_windows": len(self.train_windows), "torch_threads": torch.get_num_threads()},
            "heldout": {"episodes": self.heldout_ids, "clips": len(self.heldout_frames),
                        "loss": heldout_loss(saved, self.heldout_frames, self.heldout_actions, s.context_frames),
                        "generation": generation},
        }
        metrics["training"]["eval_seconds"] = round(time.perf_counter() - trained.finished_at, 1)
        return metrics
