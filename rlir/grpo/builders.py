"""Build a GRPO run's components (models, policy, prompt sampler, evaluation prompts) from a GRPOConfig.

models.source = pretrained loads ``save_pretrained`` directories (cast to fp32: the trained weights are the
fp32 master copy; bf16 compute comes from autocast). models.source = random builds tiny models from
``seed`` (deterministically, without touching the global RNG), so the reference model of a resumed run is
the same initialisation.

What the config asks of the models is checked before they are built, when the config loads
(``rlir.grpo.model_checks``); what only the built models can say, the sizes they must share, is checked here
(``build_models``). Each raises ConfigError naming the key to change.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from rlir.models.ar_world_model import ARWorldModel
from rlir.models.dit_world_model import DiTWorldModel
from rlir.models.idm import InverseDynamicsModel
from rlir.models.loading import WORLD_MODEL_CLASSES, load_strict
from rlir.models.tokenizer import VQTokenizer
from rlir.parallel import init_distributed, resolve_device
from rlir.policies import Policy, Prompts, make_policy
from rlir.policies.ar import check_codes_fit

from .checkpoint import list_checkpoints
from .config import ConfigError, GRPOConfig, save_config
from .model_checks import check_models
from .prompts import PromptSampler, SyntheticClips, fixed_prompts


@dataclass
class Run:
    policy: Policy  # rlir.policies.make_policy's
    idm: nn.Module
    eval_idm: Optional[nn.Module]
    prompts: PromptSampler
    eval_prompts: Optional[Prompts]
    head_names: list
    judge: Optional[object] = None  # rlir.envs.crafter_verifier.VideoJudge for Crafter recordings, else None


def build_trainer(trainer_cls, cfg: GRPOConfig, *, out_dir=None, resume: bool = False):
    """``GRPOTrainer.from_config``: models, data and a ``trainer_cls`` from ``cfg``, its config saved to out_dir,
    and with ``resume`` the latest checkpoint under out_dir loaded."""
    out_dir = Path(out_dir if out_dir is not None else cfg.out)
    if resume and not list_checkpoints(out_dir / "checkpoints"):
        raise FileNotFoundError(f"--resume: no checkpoint under {out_dir / 'checkpoints'}")
    parallel, device = init_distributed(cfg.device)  # under torchrun: this rank's device (else a no-op)
    device = device if device is not None else resolve_device(cfg.device)
    run = build_run(cfg, device)
    trainer = trainer_cls(cfg, run.policy, run.idm, run.prompts, eval_prompts=run.eval_prompts,
                          eval_idm=run.eval_idm, device=device, head_names=run.head_names, parallel=parallel,
                          judge=run.judge)
    trainer.out_dir = out_dir
    resume_step = trainer.resume(out_dir / "checkpoints") if resume else None
    if parallel.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    trainer.open_logger(resume_step)
    return trainer


def _random_models(cfg: GRPOConfig):
    r = cfg.models.random
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        tokenizer = VQTokenizer(image_size=r.image_size, **r.tokenizer)
        if cfg.models.kind == "diffusion":
            kwargs = dict(r.world_model)
            if kwargs.get("frame_space", "tokenizer_latents") == "pixels":
                kwargs.update(in_channels=3, frame_size=r.image_size)
            else:
                kwargs.update(in_channels=tokenizer.config.code_dim, frame_size=list(tokenizer.code_grid))
            world_model = DiTWorldModel(action_head_sizes=list(r.action_head_sizes), **kwargs)
        else:
            world_model = ARWorldModel(codebook_size=tokenizer.codebook_size,
                                       tokens_per_frame=tokenizer.tokens_per_frame,
                                       action_head_sizes=list(r.action_head_sizes), **r.world_model)
        idm = InverseDynamicsModel(head_sizes=list(r.action_head_sizes), frame_size=r.image_size, **r.idm)
    return world_model, tokenizer, idm


def initial_world_model(cfg: GRPOConfig) -> nn.Module:
    """The world model a run of ``cfg`` starts from: loaded from models.world_model, or built from ``seed``."""
    if cfg.models.source == "random":
        return _random_models(cfg)[0]
    return load_strict(WORLD_MODEL_CLASSES[cfg.models.kind], cfg.models.world_model, "models.world_model")


def build_models(cfg: GRPOConfig, device: torch.device):
    """-> (world_model, tokenizer, idm, eval_idm, reference_factory), all on ``device``."""
    m = cfg.models
    if m.source == "random":
        world_model, tokenizer, idm = _random_models(cfg)
        eval_idm = None
    else:
        world_model = initial_world_model(cfg)
        tokenizer = load_strict(VQTokenizer, m.tokenizer, "models.tokenizer")
        idm = load_strict(InverseDynamicsModel, m.idm, "models.idm")
        eval_idm = load_strict(InverseDynamicsModel, m.eval_idm, "models.eval_idm") if m.eval_idm else None

    def reference_factory() -> nn.Module:
        return initial_world_model(cfg)

    if m.kind == "diffusion":
        _check_diffusion_frames(world_model, tokenizer)
    else:
        _check_ar_codes(world_model, tokenizer)
    for key, model in (("models.idm", idm), ("models.eval_idm", eval_idm)):
        if model is None:
            continue
        if list(model.head_sizes) != list(world_model.head_sizes):
            raise ConfigError(key, f"action heads {list(model.head_sizes)} != the world model's "
                              f"{list(world_model.head_sizes)}")
        # Frame sizes may differ: the IDM resizes the world model's frames to its own input size.
    moved = [x.to(device) if x is not None else None for x in (world_model, tokenizer, idm, eval_idm)]
    return (*moved, reference_factory)


def _check_ar_codes(world_model: ARWorldModel, tokenizer: VQTokenizer) -> None:
    try:
        check_codes_fit(world_model, tokenizer)
    except ValueError as error:
        raise ConfigError("models.tokenizer", str(error)) from None


def _check_diffusion_frames(world_model: DiTWorldModel, tokenizer: VQTokenizer) -> None:
    wm = world_model.config
    if wm.frame_space == "pixels":
        if world_model.frame_shape != tokenizer.frame_size:
            raise ConfigError("models.world_model", f"a pixel-space DiT of {list(world_model.frame_shape)} frames; "
                              f"the tokenizer's frames are {list(tokenizer.frame_size)}")
        return
    shape = (tokenizer.config.code_dim, *tokenizer.code_grid)
    if (wm.in_channels, *world_model.frame_shape) != shape:
        raise ConfigError("models.tokenizer", f"makes latents {list(shape)}, the DiT takes "
                          f"{[wm.in_channels, *world_model.frame_shape]}")


def build_datasets(cfg: GRPOConfig, frame_size: tuple[int, int], head_sizes):
    """-> (train dataset, held-out dataset or None, head names); recorded frames are resized to ``frame_size``."""
    d, n = cfg.data, cfg.rollout.n_frames
    if d.source == "synthetic":
        common = dict(clips=d.synthetic_clips, context_frames=d.context_frames, clip_frames=n,
                      image_size=frame_size[0], head_sizes=head_sizes, seed=cfg.seed)
        names = [f"head{i}" for i in range(len(head_sizes))]
        return SyntheticClips(split="train", **common), SyntheticClips(split="heldout", **common), names
    from rlir.data import ClipDataset, Recording

    recording = Recording(d.path, frame_size=frame_size)
    space = recording.action_space
    if list(space.head_sizes) != list(head_sizes):
        raise ConfigError("data.path", f"{d.path} has action heads {space.head_sizes}, the models have "
                          f"{list(head_sizes)}")
    common = dict(context_frames=d.context_frames, clip_frames=n, stride=d.stride or n,
                  heldout_fraction=d.heldout_fraction)
    train = ClipDataset(recording, split="train", **common)
    try:
        heldout = ClipDataset(recording, split="heldout", **common)
    except ValueError as error:
        warnings.warn(f"no held-out evaluation: {error}")
        heldout = None
    return train, heldout, [h.name for h in space.heads]


def freeze_all_but(model: nn.Module, patterns) -> None:
    """Only parameters whose name matches one of the regexes (re.search) keep requires_grad (optim.trainable)."""
    names = [name for name, _ in model.named_parameters()]
    for i, pattern in enumerate(patterns):
        if not any(re.search(pattern, name) for name in names):
            raise ConfigError(f"optim.trainable[{i}]", f"{pattern!r} matches none of the world model's "
                              f"parameters, e.g. {names[:3]}")
    for name, p in model.named_parameters():
        p.requires_grad_(any(re.search(pattern, name) for pattern in patterns))


def build_run(cfg: GRPOConfig, device: torch.device) -> Run:
    check_models(cfg)  # (loading the config ran it too; a config built some other way may not have)
    world_model, tokenizer, idm, eval_idm, reference_factory = build_models(cfg, device)
    if cfg.optim.trainable is not None:
        freeze_all_but(world_model, cfg.optim.trainable)
    train, heldout, names = build_datasets(cfg, tokenizer.frame_size, list(world_model.head_sizes))
    r = cfg.rollout
    policy = make_policy(world_model, tokenizer, r, cfg.loss,
                         reference_factory=reference_factory if cfg.loss.beta > 0 else None)
    sampler = PromptSampler(train, r.prompts_per_step, context_frames=cfg.data.context_frames, n_frames=r.n_frames,
                            seed=cfg.seed)
    eval_prompts = None
    if cfg.train.eval_interval and heldout is not None:
        eval_prompts = fixed_prompts(heldout, cfg.eval.prompts, cfg.data.context_frames, r.n_frames)
    from rlir.envs.crafter_verifier import VideoJudge

    recording = getattr(heldout, "recording", None)
    judge = VideoJudge.for_action_space(recording.action_space) if recording is not None else None
    return Run(policy, idm, eval_idm, sampler, eval_prompts, names, judge)
