"""This process's place in a job that torchrun started, and the collectives the code needs, which are no-ops in
one process: ``Parallel`` (rank, world size), ``init_distributed`` (join the job: NCCL on CUDA, gloo on CPU),
``resolve_device``. Training (rlir.grpo.distributed says how a step splits) and evaluation (rlir.eval.generation)
split their work with it.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from rlir.schema import ConfigError


@dataclass(frozen=True)
class Parallel:
    """This process's place in the job: rank, world size, local rank (0 / 1 / 0 for a plain process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def current(cls) -> "Parallel":
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- collectives: no-ops in one process ---------------------------------------------------------

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """A reduced copy of ``t`` (sum or max) over ranks."""
        if not self.distributed:
            return t
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return out

    def all_gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's ``t`` (equal shapes), concatenated along dim 0 in rank order."""
        if not self.distributed:
            return t
        t = t.contiguous()
        out = t.new_empty(self.world_size * t.shape[0], *t.shape[1:])
        _all_gather_single(out, t)
        return out

    def all_gather_uneven(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's ``t`` (any number of rows, the same trailing shape), concatenated in rank order."""
        if not self.distributed:
            return t
        parts = [None] * self.world_size
        dist.all_gather_object(parts, t.cpu())
        return torch.cat(parts).to(t.device)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def shard(self, count: int) -> tuple[int, int]:
        """[start, stop) of this rank's share of ``count`` items split as evenly as possible, in rank order."""
        return count * self.rank // self.world_size, count * (self.rank + 1) // self.world_size


def _all_gather_single(out: torch.Tensor, t: torch.Tensor) -> None:
    # all_gather_into_tensor is all_gather_single in newer torch (the old name warns)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, t)


def resolve_device(name: str) -> torch.device:
    """The device a config names; ``auto`` is CUDA when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", f"{name} requested but CUDA is not available")
    return device


def bf16_enabled(setting: str, device: torch.device) -> bool:
    """``train.bf16``: true, false, or auto (where the GPU supports it); never on the CPU."""
    return device.type == "cuda" and (setting == "true" or (setting == "auto" and torch.cuda.is_bf16_supported()))


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def init_distributed(device_name: str = "auto",
                     timeout_s: Optional[float] = None) -> tuple[Parallel, Optional[torch.device]]:
    """Join the job torchrun started (its RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR environment): the default
    process group on NCCL when this rank's device is CUDA, else gloo. Returns (Parallel, this rank's device),
    (Parallel(), None) outside torchrun. Each rank takes cuda:LOCAL_RANK (``device`` auto or cuda)."""
    if not under_torchrun():
        return Parallel(), None
    if device_name not in ("auto", "cuda", "cpu"):
        raise ConfigError("device", f"under torchrun each rank takes cuda:LOCAL_RANK: use auto, cuda or cpu, "
                          f"not {device_name}")
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if dist.is_initialized():
        return Parallel.current(), device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs = {}
    if timeout_s is not None:
        from datetime import timedelta

        kwargs["timeout"] = timedelta(seconds=timeout_s)
    store = _attempt_store()
    if store is not None:
        kwargs.update(store=store, rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None, **kwargs)
    return Parallel.current(), device


def _attempt_store():
    """torchrun's own TCPStore (the agent's, which its workers share) under a prefix of the restart attempt, or
    None when torchrun did not offer its store. Without the prefix, the workers torchrun --max-restarts starts
    again read the keys their killed predecessors wrote (gloo's and NCCL's peer addresses) and fail to connect
    (pytorch/pytorch#135712; seen here with gloo on torch 2.13 about every other restart)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    base = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["WORLD_SIZE"]),
                         is_master=False)
    return dist.PrefixStore(f"rlir/attempt_{attempt}", base)


def close_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def quiet_unless_main(parallel: Parallel) -> None:
    """Ranks other than 0 print nothing on stdout (rank 0 alone logs); their stderr stays for errors."""
    if parallel.distributed and not parallel.is_main:
        sys.stdout = open(os.devnull, "w")
