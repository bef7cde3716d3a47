"""The files rlir ships (run configs and the pretrained Crafter checkpoints), found wherever rlir is installed.

In a clone they are ``configs/`` and ``checkpoints/`` at the repository root; a wheel carries them as the
package data ``rlir.configs`` and ``rlir.checkpoints`` (setup.py maps those folders). A path a user writes is
used as given when it exists; a repository-relative path of a shipped file (``configs/crafter_ar.yaml``,
``checkpoints/crafter/idm``) that does not exist from the current directory resolves to the installed copy, so
``rlir quickstart`` and the shipped configs work from any directory after a plain ``pip install``.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

SHIPPED_FOLDERS = {"configs": "rlir.configs", "checkpoints": "rlir.checkpoints"}


def shipped(relative: str | Path) -> Path | None:
    """The installed copy of a shipped file or folder given by its repository path, or None."""
    parts = Path(relative).parts
    if len(parts) < 2 or parts[0] not in SHIPPED_FOLDERS:
        return None
    try:
        root = resources.files(SHIPPED_FOLDERS[parts[0]])
    except ModuleNotFoundError:
        return None
    path = Path(str(root.joinpath(*parts[1:])))
    return path if path.exists() else None


def resolve(path: str | Path) -> Path:
    """``path`` itself when it exists (or is absolute), else its shipped copy, else ``path`` unchanged (so the
    error that follows names what the user wrote)."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    return shipped(path) or path
