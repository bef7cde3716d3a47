"""Atomic GRPO checkpoints and exact resume, in one process or sharded over many (torch.distributed.checkpoint).

Layout, one directory per saved step under the run's ``checkpoints/``::

    checkpoints/step_00000200/dcp/               the world model and AdamW state as DCP shards (every rank writes
                                                 its own; ``.metadata`` says which slice of which tensor is where,
                                                 so they load into any number of ranks and any parallel.strategy)
                             /policy.safetensors the whole world model (its state_dict; rank 0 gathers it), for
                                                 ``rlir eval --run``; left out with parallel.consolidated_weights: false
                             /trainer.pt         step, lr scheduler, RNG states, prompt-sampler position (tensors
                                                 and plain containers; loaded with weights_only=True)
                             /meta.json          {"format", "step", "config", "time", "world_size"}

Format 1 (before DCP, and for a policy without an ``nn.Module`` model) keeps the optimizer in trainer.pt and
has no dcp/; both load.

A checkpoint is written into a hidden temporary directory beside its final name (rank 0 makes it and tells
the other ranks) and renamed into place only once every file of every rank is written and fsynced, so a crash
or an exception mid-write leaves the previous checkpoints untouched and no partial ``step_*`` directory; a
rename is atomic on POSIX file systems. With several nodes, ``checkpoints/`` must be on a file system they
share. After a successful save only the newest ``keep_last`` checkpoints are kept.

``save_trainer``, ``load_trainer`` and ``resume_trainer`` save and restore the ``TrainerState`` a GRPOTrainer hands
them (its methods call them); ``resume_trainer`` falls back to the newest checkpoint that loads.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rlir.optim import use_fused_adamw
from rlir.policies import Policy

from rlir.parallel import Parallel

from .distributed import DataParallel

FORMAT = "rlir-grpo-checkpoint/2"
FORMATS = ("rlir-grpo-checkpoint/1", FORMAT)
DCP_DIR = "dcp"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")
_TMP_PREFIX = ".tmp-"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(root) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        m = _STEP_DIR.match(path.name)
        if m and path.is_dir() and (path / "meta.json").is_file():
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(root) -> Optional[Path]:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tensors_for_safetensors(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Detached contiguous CPU tensors; tensors sharing storage (tied weights) are cloned apart."""
    out, seen = {}, set()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"policy state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
        t = value.detach().cpu().contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[key] = t
    return out


def save_checkpoint(root, step: int, policy_state: Optional[Dict[str, torch.Tensor]], trainer_state: dict,
                    meta: Optional[dict] = None, keep_last: Optional[int] = None, *,
                    sharded: Optional[dict] = None) -> Path:
    """Write checkpoint ``step`` atomically under ``root`` and prune to ``keep_last``; returns its path.

    In a job of several ranks every rank calls it: ``sharded`` (a DCP state dict, e.g. {"model": ..., "optim":
    ...}) is written by all of them with ``torch.distributed.checkpoint.save``; rank 0 alone writes
    ``policy_state`` (None: no policy.safetensors), ``trainer_state`` and meta.json, then renames."""
    root = Path(root)
    parallel = Parallel.current()
    main = parallel.is_main
    final = root / step_dir_name(step)
    tmp = None
    if main:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(_TMP_PREFIX + "*"):  # left behind by a killed process
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f"{_TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    tmp = parallel.broadcast_object(tmp)
    try:
        if sharded is not None:
            import torch.distributed.checkpoint as dcp

            with _one_process_quiet():
                dcp.save(sharded, checkpoint_id=str(tmp / DCP_DIR), no_dist=not parallel.distributed)
        parallel.barrier()  # every rank's shards are on disk
        if main:
            _finish_checkpoint(tmp, final, root, step, policy_state, trainer_state, meta, parallel.world_size)
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    parallel.barrier()  # no rank goes on (or prunes) before the checkpoint is in place
    if keep_last is not None and main:
        prune_checkpoints(root, keep_last)
    parallel.barrier()
    return final


def _finish_checkpoint(tmp: Path, final: Path, root: Path, step: int, policy_state, trainer_state, meta,
                       world: int) -> None:
    names = []
    if policy_state is not None:
        save_file(_tensors_for_safetensors(policy_state), str(tmp / "policy.safetensors"))
        names.append("policy.safetensors")
    torch.save(trainer_state, tmp / "trainer.pt")
    fmt = FORMAT if (tmp / DCP_DIR).is_dir() else FORMATS[0]
    info = {"format": fmt, "step": int(step), "time": time.time(), "world_size": world, **(meta or {})}
    (tmp / "meta.json").write_text(json.dumps(info, indent=1, default=str))
    for name in (*names, "trainer.pt", "meta.json"):
        _fsync_file(tmp / name)
    _fsync_dir(tmp)
    old = None
    if final.exists():  # re-saving a step (e.g. after a resume): swap, then drop the old one
        old = root / f"{_TMP_PREFIX}old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def prune_checkpoints(root, keep_last: int) -> None:
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    for _, path in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(path, map_location="cpu") -> tuple[Optional[Dict[str, torch.Tensor]], dict, dict]:
    """-> (policy_state or None without policy.safetensors, trainer_state, meta) of the checkpoint directory
    ``path``; the DCP shards (``is_sharded``) load with ``load_sharded``."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path}: not a checkpoint (no meta.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") not in FORMATS:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected one of {list(FORMATS)}")
    if meta["format"] == FORMAT and not (path / DCP_DIR / ".metadata").is_file():
        raise FileNotFoundError(f"{path}: no {DCP_DIR}/.metadata (an incomplete sharded checkpoint)")
    weights = path / "policy.safetensors"
    policy_state = load_file(str(weights), device="cpu") if weights.is_file() else None
    if policy_state is None and meta["format"] != FORMAT:
        raise FileNotFoundError(f"{path}: no policy.safetensors")
    trainer_state = torch.load(path / "trainer.pt", map_location=map_location, weights_only=True)
    return policy_state, trainer_state, meta


def is_sharded(path) -> bool:
    return (Path(path) / DCP_DIR / ".metadata").is_file()


def load_sharded(path, state: dict) -> None:
    """Fill the DCP state dict ``state`` (as given to save_checkpoint's ``sharded``; every rank of the job,
    each with its own shards of the tensors) in place from checkpoint ``path``: any saved world size and
    strategy reshards to the current one. Keys of ``state`` may be a subset of the saved ones."""
    import torch.distributed.checkpoint as dcp

    with _one_process_quiet():
        dcp.load(state, checkpoint_id=str(Path(path) / DCP_DIR), no_dist=not Parallel.current().distributed)


@contextlib.contextmanager
def _one_process_quiet():
    """DCP warns that it assumes one process when there is no process group: that is what we mean."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


# ---- a training run's state ----------------------------------------------------------------------------

@dataclass
class TrainerState:
    """What a checkpoint saves of a run and restores into it, in place: the step, the policy, ``scoring`` (its
    world model under parallel.strategy), the optimizer (``fused_adamw``: the fused AdamW) and its lr schedule, the
    prompt sampler, and the processes. GRPOTrainer.checkpoint_state hands over its own objects."""

    step: int
    policy: Policy
    scoring: DataParallel
    optimizer: torch.optim.Optimizer
    scheduler: Any  # torch.optim.lr_scheduler.LRScheduler
    prompts: Any  # state_dict() / load_state_dict(state), e.g. a PromptSampler
    fused_adamw: bool
    parallel: Parallel


def trainer_state(run: TrainerState) -> dict:
    """What trainer.pt holds: step, lr schedule, the global RNGs and the sampler's position. (Every random
    stream of a step is derived from (seed, step), so no generator state is needed; the world model and
    the optimizer are the DCP shards, or ``optimizer`` here for a policy without an nn.Module.)"""
    state = {
        "step": run.step,
        "scheduler": run.scheduler.state_dict(),
        "rng": rng_state(),
        "sampler": run.prompts.state_dict(),
    }
    if run.scoring.module is None:
        state["optimizer"] = run.optimizer.state_dict()
    return state


def _sharded_state(run: TrainerState) -> dict:
    """The DCP state dict of the world model and AdamW state: every rank's shards under FSDP, keys
    ``model.<name>`` under every strategy (so a checkpoint resumes with any number of ranks and strategy)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, optim = get_state_dict(run.scoring.module, run.optimizer)
    return {"model": model, "optim": optim}


def save_trainer(run: TrainerState, cfg, root) -> Path:
    """Checkpoint ``run`` at its step under ``root``, with its GRPOConfig ``cfg`` (in meta.json; train.keep_last,
    parallel.consolidated_weights). Every rank calls this (a collective under torchrun): the DCP shards from every
    rank, the rest from rank 0."""
    meta = {"config": cfg.to_dict()}
    if run.scoring.module is None:  # a policy without an nn.Module model: format 1, one process
        return save_checkpoint(root, run.step, run.policy.state_dict(), trainer_state(run), meta=meta,
                               keep_last=cfg.train.keep_last)
    weights = run.scoring.full_state_dict() if cfg.parallel.consolidated_weights else None
    return save_checkpoint(root, run.step, weights, trainer_state(run), meta=meta, keep_last=cfg.train.keep_last,
                           sharded=_sharded_state(run))


def load_trainer(run: TrainerState, path) -> int:
    """Restore the world model, optimizer, scheduler, RNG states and sampler position of ``run`` from checkpoint
    ``path`` (a collective under torchrun); returns the checkpoint's step, the step to go on from."""
    policy_state, state, _ = load_checkpoint(path)
    if is_sharded(path):
        if run.scoring.module is None:
            raise ValueError(f"{path}: a sharded checkpoint needs a policy with an nn.Module model")
        from torch.distributed.checkpoint.state_dict import set_state_dict

        sharded = _sharded_state(run)
        load_sharded(path, sharded)
        set_state_dict(run.scoring.module, run.optimizer, model_state_dict=sharded["model"],
                       optim_state_dict=sharded["optim"])
    elif run.parallel.distributed:
        raise ValueError(f"{path}: a format-1 checkpoint (no DCP shards) resumes in one process only")
    else:
        run.policy.load_state_dict(policy_state)
        run.optimizer.load_state_dict(state["optimizer"])
    if run.fused_adamw:  # a checkpoint from before the fused optimizer carries fused=None and CPU steps
        use_fused_adamw(run.optimizer)
    run.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    run.prompts.load_state_dict(state["sampler"])
    return int(state["step"])


def resume_trainer(run: TrainerState, root) -> int:
    """Load the newest checkpoint under ``root`` that loads into ``run`` (a newer one that does not, a corrupt or
    half-copied file, is skipped with a warning naming it); returns its step. FileNotFoundError if none does."""
    for _, path in reversed(list_checkpoints(root)):
        try:
            return load_trainer(run, path)
        except Exception as error:  # noqa: BLE001 - any unreadable file: JSON, DCP, safetensors, torch
            if run.parallel.is_main:
                warnings.warn(f"{path}: cannot be loaded ({type(error).__name__}: {error}); trying an older "
                              f"checkpoint")
    raise FileNotFoundError(f"--resume: no loadable checkpoint under {root}")


# ---- RNG states -------------------------------------------------------------------------------------

def rng_state() -> dict:
    """The global RNGs (torch CPU + CUDA, numpy, python) as weights_only-loadable containers."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": _python_state_to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(_python_state_from_lists(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _python_state_to_lists(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_lists(state):
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
