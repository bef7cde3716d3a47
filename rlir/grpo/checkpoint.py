"""Atomic GRPO checkpoints and exact resume.

Layout, one directory per saved step under the run's ``checkpoints/``::

    checkpoints/step_00000200/policy.safetensors   the policy's state_dict (safetensors, no pickle)
                             /trainer.pt           optimizer, lr scheduler, RNG states, prompt-sampler position
                                                   (tensors and plain containers; loaded with weights_only=True)
                             /meta.json            {"format", "step", "config", "time"}

A checkpoint is written into a hidden temporary directory beside its final name and renamed into place
only once every file is written and fsynced, so a crash or an exception mid-write leaves the previous
checkpoints untouched and no partial ``step_*`` directory; a rename is atomic on POSIX file systems.
After a successful save only the newest ``keep_last`` checkpoints are kept.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

FORMAT = "rlir-grpo-checkpoint/1"
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


def load_latest_checkpoint(root) -> Optional[tuple[Path, Dict[str, torch.Tensor], dict]]:
    """(path, policy_state, trainer_state) of the newest checkpoint under ``root`` that loads, or None. A newer
    one that does not load (a corrupt or half-copied file) is skipped with a warning naming it, so ``--resume``
    continues from the last good state instead of failing."""
    for _, path in reversed(list_checkpoints(root)):
        try:
            policy_state, trainer_state, _ = load_checkpoint(path)
        except Exception as error:  # noqa: BLE001 - any unreadable file: JSON, safetensors, torch, missing
            warnings.warn(f"{path}: cannot be loaded ({type(error).__name__}: {error}); trying an older checkpoint")
            continue
        return path, policy_state, trainer_state
    return None


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


def save_checkpoint(root, step: int, policy_state: Dict[str, torch.Tensor], trainer_state: dict,
                    meta: Optional[dict] = None, keep_last: Optional[int] = None) -> Path:
    """Write checkpoint ``step`` atomically under ``root`` and prune to ``keep_last``; returns its path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(_TMP_PREFIX + "*"):  # left behind by a killed process
        shutil.rmtree(stale, ignore_errors=True)
    final = root / step_dir_name(step)
    tmp = root / f"{_TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file(_tensors_for_safetensors(policy_state), str(tmp / "policy.safetensors"))
        torch.save(trainer_state, tmp / "trainer.pt")
        info = {"format": FORMAT, "step": int(step), "time": time.time(), **(meta or {})}
        (tmp / "meta.json").write_text(json.dumps(info, indent=1, default=str))
        for name in ("policy.safetensors", "trainer.pt", "meta.json"):
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_last is not None:
        prune_checkpoints(root, keep_last)
    return final


def prune_checkpoints(root, keep_last: int) -> None:
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    for _, path in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(path, map_location="cpu") -> tuple[Dict[str, torch.Tensor], dict, dict]:
    """-> (policy_state, trainer_state, meta) of the checkpoint directory ``path``."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path}: not a checkpoint (no meta.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    policy_state = load_file(str(path / "policy.safetensors"), device="cpu")
    trainer_state = torch.load(path / "trainer.pt", map_location=map_location, weights_only=True)
    return policy_state, trainer_state, meta


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
