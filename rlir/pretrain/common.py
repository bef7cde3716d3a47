"""Training plumbing shared by the `rlir pretrain` targets: frame sizes, the tokenizer, batches, the lr schedule,
metrics lines and atomic output directories (their settings are rlir.pretrain.config's schemas)."""
from __future__ import annotations

import json
import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

# Saved weight dtypes -> the nn.Module cast to each: these convert floating-point tensors only (integer
# and bool buffers stay), and ModelMixin.to(dtype) would warn about fp32-kept modules.
SAVE_DTYPES = {"fp32": "float", "bf16": "bfloat16", "fp16": "half"}


def resolve_frame_size(frame_size, recording) -> tuple[int, int]:
    """--frame-size (None, [S], [H, W], an int or a pair) -> (height, width); None means the recording's own."""
    from rlir.models.arguments import frame_size_pair

    if frame_size is None:
        return tuple(recording.frame_size)
    if isinstance(frame_size, (list, tuple)) and len(frame_size) == 1:
        frame_size = frame_size[0]
    return frame_size_pair("frame_size", frame_size)


def load_tokenizer(path):
    """The frozen fp32 VQTokenizer saved in ``path`` (``rlir pretrain tokenizer``)."""
    from rlir.models.tokenizer import VQTokenizer

    if not (Path(path) / "config.json").is_file():
        raise ValueError(f"tokenizer: {path} holds no config.json; train one with `rlir pretrain tokenizer`")
    return VQTokenizer.from_pretrained(path, torch_dtype=torch.float32).eval()


def heldout_split(recording, heldout_fraction: float) -> tuple[list[str], list[str]]:
    """(train, held-out) episode ids of ``recording`` (``rlir.data.split_episodes``); an error when none is held out."""
    from rlir.data import split_episodes

    train_ids, heldout_ids = split_episodes(recording.episode_ids, heldout_fraction)
    if not heldout_ids:
        raise ValueError(f"data: {recording.root} has {len(recording)} episode(s); holding out a fraction needs at "
                         f"least 2")
    return train_ids, heldout_ids


def first_stage(model_class, init: str, clip_frames: int, **expected):
    """The world model saved at ``init`` (``--init``: a first stage) in fp32, checked to fit this run: its config
    holds ``expected`` and its max_frames takes ``clip_frames``."""
    model = model_class.from_pretrained(init, torch_dtype=torch.float32)
    found = {key: model.config[key] for key in expected}
    if found != expected or clip_frames > model.config.max_frames:
        raise ValueError(f"init: {init} has {_in_words(found)} and max_frames {model.config.max_frames}; this run "
                         f"has {_in_words(expected)} and clip_frames {clip_frames}")
    return model


def _in_words(settings: dict) -> str:
    return " and ".join(f"{key} {value}" for key, value in settings.items())


def check_output_directory(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"out: {out} exists and is not empty; pass --overwrite to replace it")


def shuffled_batches(n: int, batch: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless index batches: each pass over range(n) is a fresh permutation (batches may span two passes)."""
    pending = torch.empty(0, dtype=torch.int64)
    while True:
        while len(pending) < batch:
            pending = torch.cat([pending, torch.randperm(n, generator=generator)])
        yield pending[:batch]
        pending = pending[batch:]


def learning_rate(step: int, steps: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up over min(warmup, steps // 10) steps, then cosine decay to 10% of ``peak``."""
    warmup = min(warmup, steps // 10)
    if step <= warmup:
        return peak * step / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@contextmanager
def atomic_directory(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``final`` to write into. When the block succeeds it is renamed
    to ``final`` (replacing an existing one only when ``overwrite``); when it fails it is deleted. Readers
    never see a half-written ``final``."""
    final = Path(final)
    check_output_directory(final, overwrite)
    staging = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists():
        retired = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, retired)
        os.replace(staging, final)
        shutil.rmtree(retired)
    else:
        os.replace(staging, final)


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def clip_windows(store, recording, train_ids: list[str], heldout_ids: list[str], clip_frames: int,
                 prompt_frames: int, prompts: int) -> tuple[list, list, list]:
    """(episode, start) windows of a world model's data (``store.windows(ids, length, stride)``): every train
    clip (stride 1), the held-out evaluation clips (not overlapping) and ``prompts`` held-out generation
    prompts spread evenly over the held-out episodes."""
    import torch

    train = store.windows(train_ids, clip_frames, stride=1)
    heldout = store.windows(heldout_ids, clip_frames, stride=clip_frames)
    generation = store.windows(heldout_ids, prompt_frames, stride=prompt_frames)
    for name, windows, frames, episodes in (("train", train, clip_frames, train_ids),
                                            ("held-out", heldout, clip_frames, heldout_ids),
                                            ("held-out", generation, prompt_frames, heldout_ids)):
        if not windows:
            raise ValueError(f"data: the {len(episodes)} {name} episode(s) of {recording.root} are all shorter "
                             f"than {frames} frames; lower --clip-frames or --eval-frames")
    picks = torch.linspace(0, len(generation) - 1, min(prompts, len(generation))).round().long()
    return train, heldout, [generation[i] for i in picks.tolist()]
