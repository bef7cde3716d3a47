"""Data-parallel GRPO on many processes: ``torchrun --nproc_per_node N -m rlir train --config ...``.

Everything here is PyTorch's own machinery: torchrun starts the processes and runs the rendezvous (one node or
``--nnodes``/``--rdzv-backend c10d``), ``init_process_group`` joins them (NCCL on CUDA, gloo on CPU, chosen from
the device), FSDP2's ``fully_shard`` or ``DistributedDataParallel`` wraps the world model, and
``torch.distributed.checkpoint`` writes sharded checkpoints (rlir.grpo.checkpoint).

How a step splits over N ranks (rank r of N):

- Prompts: every rank draws the same global batch of B prompts from its own copy of the sampler and keeps
  prompts [r B/N, (r+1) B/N) with all G samples of each, so a group never spans ranks; rollout, decode, the
  IDM reward and the group advantages run on each rank alone.
- Random draws: prompt b's samples come from a generator seeded by (seed, step, b) (rlir.models.generators),
  so N ranks sample exactly what one process sampling all B prompts samples.
- Minibatches: ``minibatch_orders`` assigns the B*G rows to minibatches with a rule that gives every rank the
  same number of rows of each minibatch, whatever N: each prompt's G samples are shuffled (seeded by
  (seed, step, epoch)), and the sample at position i of the prompt-major list goes to minibatch i mod M (M
  minibatches an epoch; their order is shuffled too). So the updates of N ranks are the updates of one process.
- Batch-wide statistics are reduced over ranks: ``advantage.scale: batch`` (every rank's rewards are gathered and
  normalised together, rlir.grpo.advantages), the reward and advantage metrics, the loss normaliser of every minibatch
  (tokens or sequences of the whole minibatch) and the loss metrics. Each rank's loss is multiplied by N
  before backward, because DDP and FSDP average gradients over ranks: the update then uses the sum of the
  ranks' gradients, i.e. the gradient of the global minibatch's loss.
- The world model: ``parallel.strategy`` fsdp shards every transformer block and the rest (embeddings, heads)
  with ``fully_shard`` (parameters, gradients and AdamW state are 1/N per rank; bf16 parameters with fp32
  gradient reduction on CUDA); ddp replicates it and all-reduces gradients. The rollout gathers the full
  weights once (FSDP ``unshard``) and samples without per-token all-gathers. Frozen models (the reference
  model, the tokenizer, the IDMs) are plain replicated modules, never in the optimiser.
- Rank 0 alone logs (stdout, metrics.jsonl, TensorBoard) and writes the run's files; every rank writes its
  shards of a checkpoint.

A policy's scoring methods (``logprobs``, ``logprobs_and_kl``) are not its model's ``forward``, so the trainer
runs them through ``ScoringModule.forward(fn, ...)``: DDP arms its gradient all-reduce and FSDP gathers the
root's parameters on that forward. Any ``ModelPolicy`` (a policy with an ``nn.Module`` ``model``) works.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Iterator, List, Optional

import torch
import torch.nn as nn

from rlir.models.generators import derive_seed
from rlir.parallel import Parallel

from .config import ConfigError

SHUFFLE_STREAM = 3  # rlir.models.generators' stream tags: 0 rollout, 1 shared, 2 eval


# ---- the world model under DDP / FSDP ---------------------------------------------------------------------

class ScoringModule(nn.Module):
    """Holds the policy's world model (``self.model``); ``forward(fn, *args)`` returns ``fn(*args)``, a policy
    scoring method that uses the model, so that DDP / FSDP treat it as this module's forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kwargs):
        out = fn(*args, **kwargs)
        # FSDP registers its pre-backward hook on the outputs; a view would lose it to an in-place op.
        if isinstance(out, torch.Tensor):
            return out.clone() if out._base is not None else out
        if isinstance(out, tuple):
            return tuple(o.clone() if isinstance(o, torch.Tensor) and o._base is not None else o for o in out)
        return out


def transformer_blocks(model: nn.Module) -> List[nn.Module]:
    """The modules FSDP shards one by one: the classes named in the model's ``_no_split_modules`` (the Hugging
    Face convention) if it has them, else the elements of its ``layers`` / ``blocks`` ModuleLists."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    if names:
        return [m for m in model.modules() if type(m).__name__ in names]
    blocks: List[nn.Module] = []
    for attr in ("layers", "blocks"):
        found = getattr(model, attr, None)
        if isinstance(found, nn.ModuleList):
            blocks.extend(found)
    return blocks


class DataParallel:
    """How the trainer runs the policy's training forwards under ``parallel.strategy``.

    ``module`` is the ScoringModule whose state dicts the checkpoints hold (keys ``model.<name>`` for every
    strategy, so a checkpoint resumes under any other), None for a policy without an ``nn.Module`` model (one
    process only). ``__call__(fn, *args)`` runs a scoring method; ``sync(last)`` wraps a micro-batch (DDP
    all-reduces only on the last of a minibatch); ``gathered()`` wraps sampling (FSDP: the whole model
    unsharded once, resharded after); ``grad_scale`` (N) turns the wrappers' gradient mean into a sum."""

    def __init__(self, policy, strategy: str, parallel: Parallel, bf16: bool = False):
        model = getattr(policy, "model", None)
        self.parallel = parallel
        self.module = ScoringModule(model) if isinstance(model, nn.Module) else None
        self.strategy = strategy if parallel.distributed else "none"
        self.ddp = None
        self.fsdp_modules: list = []
        if not parallel.distributed:
            return
        if strategy == "none":
            raise ConfigError("parallel.strategy", f"none trains in one process; this is rank {parallel.rank} of "
                              f"{parallel.world_size}: use fsdp or ddp under torchrun")
        if self.module is None:
            raise ConfigError("parallel.strategy", f"{strategy} needs a policy with an nn.Module `model` "
                              f"(a ModelPolicy); {type(policy).__name__} has none")
        if strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            # device_ids=None: the inputs (a rollout and row indices) are already on the device. No buffer
            # broadcast at every forward (the models' buffers are constants; broadcast_buffers before torch 2.12).
            no_sync = ({"forward_sync_buffers": False}
                       if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                       else {"broadcast_buffers": False})
            self.ddp = DistributedDataParallel(self.module, gradient_as_bucket_view=True, **no_sync)
        else:
            self._shard(model, bf16)

    def _shard(self, model: nn.Module, bf16: bool) -> None:
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
            else MixedPrecisionPolicy()
        self._reshard_after_forward = {}
        for block in transformer_blocks(model):
            fully_shard(block, mp_policy=mp, reshard_after_forward=True)
            self._reshard_after_forward[id(block)] = True
        fully_shard(self.module, mp_policy=mp, reshard_after_forward=False)
        self._reshard_after_forward[id(self.module)] = False
        self.fsdp_modules = [m for m in self.module.modules() if isinstance(m, FSDPModule)]
        with torch.no_grad():
            self.module(lambda: None)  # FSDP's lazy initialisation runs on the root's first forward
        for m in self.fsdp_modules:  # the root keeps its parameters gathered after a forward: shard them again,
            m.reshard()              # so that the optimizer is built over the shards

    @property
    def grad_scale(self) -> float:
        return float(self.parallel.world_size) if self.parallel.distributed else 1.0

    def __call__(self, fn, *args):
        if self.ddp is not None:
            return self.ddp(fn, *args)
        if self.fsdp_modules:
            return self.module(fn, *args)
        return fn(*args)

    @contextlib.contextmanager
    def sync(self, last: bool):
        if self.ddp is None or last:
            yield
        else:
            with self.ddp.no_sync():
                yield

    @contextlib.contextmanager
    def gathered(self):
        if not self.fsdp_modules:
            yield
            return
        for m in self.fsdp_modules:
            m.set_reshard_after_forward(False, recurse=False)
        handles = [m.unshard(async_op=True) for m in self.fsdp_modules]
        for h in handles:
            if h is not None:
                h.wait()
        try:
            yield
        finally:
            for m in self.fsdp_modules:
                m.reshard()
                m.set_reshard_after_forward(self._reshard_after_forward[id(m)], recurse=False)

    def full_state_dict(self) -> Optional[dict]:
        """The world model's whole state dict (its own key names) on rank 0, None elsewhere (a collective
        under FSDP)."""
        if self.fsdp_modules:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            full = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if not self.parallel.is_main:
                return None
            return {k[len("model."):]: v for k, v in full.items()}
        if not self.parallel.is_main:
            return None
        return self.module.model.state_dict()


# ---- minibatches that split evenly over ranks --------------------------------------------------------------

def minibatch_orders(seed: int, step: int, epochs: int, prompts: int, group_size: int, minibatches: int,
                     parallel: Parallel = Parallel()) -> List[torch.Tensor]:
    """Per epoch, this rank's rows (local indices, int64) in update order: minibatch after minibatch, each
    holding (B G / M) / N of its rows. See the module docstring; the same on every rank and for every N."""
    per_rank = prompts * group_size // parallel.world_size
    lo = parallel.rank * per_rank
    out = []
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(derive_seed(seed, SHUFFLE_STREAM, step, epoch))
        within = torch.rand(prompts, group_size, generator=g).argsort(dim=1)
        rows = (torch.arange(prompts)[:, None] * group_size + within).reshape(-1)  # the row at each position
        positions = torch.arange(lo, lo + per_rank)
        mine = rows[lo:lo + per_rank] - lo
        slot = torch.empty(minibatches, dtype=torch.long)
        slot[torch.randperm(minibatches, generator=g)] = torch.arange(minibatches)  # minibatch -> update slot
        # minibatch by minibatch in update order, by position within each (no host read: CPU tensors only)
        out.append(mine[torch.argsort(slot[positions % minibatches], stable=True)])
    return out


def update_orders(cfg, step: int, rows: int, parallel: Parallel, device: torch.device) -> List[torch.Tensor]:
    """This step's ``minibatch_orders`` for this rank's ``rows`` videos, on ``device`` in one non-blocking copy
    for every epoch (not one per micro-batch)."""
    g = cfg.rollout.group_size
    orders = minibatch_orders(cfg.seed, step, cfg.train.inner_epochs, rows // g * parallel.world_size, g,
                              cfg.videos_per_step // cfg.minibatch_size, parallel)
    return list(torch.stack(orders).to(device, non_blocking=True))


def micro_batches(order: torch.Tensor, minibatch_rows: int, micro_batch_size: int) -> Iterator[List[torch.Tensor]]:
    """An epoch's ``order`` cut into minibatches of this rank's ``minibatch_rows`` (minibatch_size / N), each a
    list of micro-batches."""
    for start in range(0, len(order), minibatch_rows):
        mb = order[start:start + minibatch_rows]
        yield [mb[i:i + micro_batch_size] for i in range(0, len(mb), micro_batch_size)]


def check_divisible(cfg, parallel: Parallel) -> None:
    """The global batch must split evenly: B prompts and every minibatch over the N ranks."""
    n = parallel.world_size
    if n == 1:
        return
    b = cfg.rollout.prompts_per_step
    if b % n:
        raise ConfigError("rollout.prompts_per_step", f"{b} prompts do not split over {n} ranks (each rank takes "
                          f"whole groups: B must be a multiple of the number of processes)")
    if cfg.minibatch_size % n:
        raise ConfigError("train.micro_batch_size", f"a minibatch of micro_batch_size x grad_accumulation = "
                          f"{cfg.minibatch_size} videos does not split over {n} ranks")


def check_shardable(prompts, parallel: Parallel) -> None:
    """Under torchrun the prompt sampler hands each rank its share of the global batch (``next_shard``)."""
    if parallel.distributed and not hasattr(prompts, "next_shard"):
        raise ConfigError("parallel", f"{type(prompts).__name__} has no next_shard(rank, world_size): the "
                          f"prompt sampler must hand each rank its share of the global batch")


# ---- a step's statistics over every rank -------------------------------------------------------------------

def global_rollout_stats(parallel: Parallel, rollout, old_logp: Optional[torch.Tensor], rew, adv: torch.Tensor):
    """The step's statistics over every rank: rewards and advantages gathered (small: one value per video, or per
    slot with frame credit), the NLL of ``old_logp`` (None: no NLL) and head-accuracy sums all-reduced."""
    frames = float(rollout.actions.shape[0] * rollout.actions.shape[1])
    nll = rollout.mask.new_zeros((), dtype=torch.double) if old_logp is None else (old_logp * rollout.mask).sum()
    sums = torch.cat([torch.stack([nll.double(), rollout.mask.sum().double()]), rew.head_accuracy.double() * frames])
    sums = parallel.all_reduce(sums)
    heads = sums[2:] / (frames * parallel.world_size)
    return {"reward": parallel.all_gather_rows(rew.reward.float()), "adv": parallel.all_gather_rows(adv),
            "nll": None if old_logp is None else sums[0], "tokens": sums[1], "head_acc": heads}
