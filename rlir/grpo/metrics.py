"""A GRPO step's metrics: tensors on the device until the step's one host read (``to_host``).

Metric names are grouped by "/": reward/, adv/, rollout/, loss/, optim/ measure the optimisation; time/, perf/
and mem/ measure the machine (``MACHINE_METRIC_PREFIXES``: left out when comparing runs).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

from rlir.profiling import peak_memory, reset_peak_memory
from rlir.profiling.memory import max_rss_bytes

# Metrics that measure the machine, not the optimisation (left out when comparing runs).
MACHINE_METRIC_PREFIXES = ("time/", "perf/", "mem/")


class Deferred:
    """A metric finished on the host after the step's one read: ``fn(*args)`` with every tensor in ``args``
    replaced by its value (floats; lists for 1-d tensors). ``fn`` returns a value, or a dict of metrics."""

    def __init__(self, fn: Callable, args: tuple):
        self.fn, self.args = fn, args


def to_host(metrics: Dict[str, Any]) -> Dict[str, float]:
    """Every tensor in ``metrics`` (0-d or 1-d; also inside lists and Deferred arguments) read back with one
    ``tolist``, as float64 (fp32 values convert exactly), then each ``Deferred`` finished on the host."""
    tensors: List[torch.Tensor] = []

    def collect(value):
        if isinstance(value, torch.Tensor):
            tensors.append(value.detach().reshape(-1))
        elif isinstance(value, (list, tuple)):
            for v in value:
                collect(v)
        elif isinstance(value, Deferred):
            collect(value.args)

    for value in metrics.values():
        collect(value)
    flat = torch.cat([t.to(tensors[0].device, torch.float64) for t in tensors]).tolist() if tensors else []
    position = 0

    def rebuild(value):
        nonlocal position
        if isinstance(value, torch.Tensor):
            n = value.numel()
            out = flat[position:position + n]
            position += n
            return out[0] if value.ndim == 0 else out
        if isinstance(value, (list, tuple)):
            return type(value)(rebuild(v) for v in value)
        if isinstance(value, Deferred):
            return value.fn(*rebuild(value.args))
        return value

    out: Dict[str, float] = {}
    for key, value in metrics.items():
        value = rebuild(value)
        if isinstance(value, dict):
            out.update(value)
        else:
            out[key] = value
    return out


def head_names(names: Optional[Sequence[str]], count: int) -> List[str]:
    """The action heads' names, or head0, head1, ... when the run has none."""
    return list(names) if names else [f"head{i}" for i in range(count)]


def rollout_metrics(stats: Dict[str, torch.Tensor], group_size: int,
                    names: Optional[Sequence[str]]) -> Dict[str, Any]:
    """Reward and advantage metrics of the whole step, from every rank's videos
    (``rlir.grpo.distributed.global_rollout_stats``)."""
    g = group_size
    r, adv = stats["reward"], stats["adv"]
    names = head_names(names, len(stats["head_acc"]))
    m = {
        "reward/mean": r.nanmean(),
        "reward/std": r.std() if r.numel() > 1 else 0.0,
        "reward/min": r.min(),
        "reward/max": r.max(),
        "adv/mean": adv.mean(),
        "adv/std": adv.std() if adv.numel() > 1 else 0.0,
        "adv/abs_max": adv.abs().max(),
        "adv/zero_group_frac": (r.view(-1, g).amax(1) == r.view(-1, g).amin(1)).float().mean(),
        "reward/head_acc": Deferred(lambda acc: {f"reward/head_acc/{n}": a for n, a in zip(names, acc)},
                                    (stats["head_acc"],)),
    }
    if stats["nll"] is not None:  # None: no old log-probs were scored (loss.old_logprobs: current)
        m["rollout/nll_per_token"] = Deferred(lambda nll, count: -nll / max(1, int(count)),
                                              (stats["nll"], stats["tokens"]))
    return m


def update_metrics(records: list, lrs: List[float], parallel, timer) -> Deferred:
    """The loss/ and optim/ metrics of a step's updates. ``records``: per minibatch (grad norm, [(loss, tokens,
    loss metrics, first-update deviation or None) per micro-batch]), as device tensors. Sums over micro-batches
    in float64 and, over ranks, one all-reduce each for the sums and the max."""
    keys = list(records[0][1][0][2])
    micro = [r for _, mr in records for r in mr]
    tokens = torch.stack([t for _, t, _, _ in micro]).double()
    lm_sums = (torch.stack([torch.stack([lm[key] for key in keys]) for _, _, lm, _ in micro]).double()
               * tokens[:, None]).sum(0)
    losses = torch.stack([torch.stack([loss for loss, _, _, _ in mr]).double().sum() for _, mr in records])
    sums = torch.cat([losses, tokens.sum()[None], lm_sums])
    # No deviations (loss.old_logprobs: current): every ratio was 1 by construction.
    deviations = [d for _, _, _, d in micro if d is not None]
    first_dev = torch.stack(deviations).max().double() if deviations else tokens.new_zeros(())
    if parallel.distributed:
        with timer.phase("comm"):
            sums, first_dev = parallel.all_reduce(sums), parallel.all_reduce(first_dev, "max")
    n_mb = len(records)

    def finish(sums, first_dev, norms):
        token_total = sums[n_mb]
        m = {f"loss/{k}": v / max(token_total, 1.0) for k, v in zip(keys, sums[n_mb + 1:])}
        m["loss/loss"] = sum(sums[:n_mb]) / n_mb
        m["loss/first_update_logratio_max"] = first_dev
        m["optim/lr"] = lrs[0]
        m["optim/grad_norm"] = sum(norms) / len(norms)
        m["optim/grad_norm_max"] = max(norms)
        m["optim/updates"] = float(len(norms))
        m["optim/skipped_updates"] = float(sum(not math.isfinite(n) for n in norms))  # the trainer warns
        return m

    return Deferred(finish, (sums, first_dev, [norm for norm, _ in records]))


def max_deviation(logp: torch.Tensor, old: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The largest |logp - old| over the real slots of a first update: 0 when the old log-probs are the
    training forward's own, so every first ratio is 1."""
    return ((logp.detach().float() - old).abs() * mask).max()


class StepClock:
    """A step's wall time, up to the device's last kernel, with the peak memory counted from its start."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            reset_peak_memory(device)
        self.start = time.perf_counter()

    def throughput(self, phases: Mapping[str, float], videos: int, frames: int, slots: int) -> Dict[str, float]:
        """``throughput_metrics`` of the step that started with this clock and ends now."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return throughput_metrics(time.perf_counter() - self.start, phases, videos, frames, slots, self.device)


def throughput_metrics(elapsed: float, phases: Mapping[str, float], videos: int, frames: int, slots: int,
                       device: torch.device) -> Dict[str, float]:
    """time/ (the step and each phase), perf/ (``videos`` of ``frames`` frames and ``slots`` log-prob slots each,
    over every rank) and mem/ metrics of a step that took ``elapsed`` seconds."""
    m = {"time/step": elapsed}
    for name, seconds in phases.items():
        m[f"time/{name}"] = seconds
    m["perf/videos_per_s"] = videos / elapsed
    m["perf/frames_per_s"] = videos * frames / elapsed
    m["perf/tokens_per_s"] = videos * slots / elapsed
    m["perf/rollout_tokens_per_s"] = videos * slots / max(phases.get("rollout", 0.0), 1e-9)
    if device.type == "cuda":
        m["mem/peak_gib"] = peak_memory(device) / 2**30
    else:
        m["mem/max_rss_gib"] = max_rss_bytes() / 2**30
    return m
