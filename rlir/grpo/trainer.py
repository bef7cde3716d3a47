"""The RLIR GRPO loop: rollout -> decode -> IDM reward -> group advantages -> clipped policy-gradient updates.

One step (every phase inside ``PhaseTimer.phase``, i.e. an NVTX range plus a timer; see rlir.profiling.phases):

    data         B prompts from the resumable sampler (context frames + commanded actions)
    rollout      policy.rollout(prompts, G): N = B*G videos, recording old log-probs      (no grad)
    decode       policy.decode -> uint8 [N, n+1, 3, h, w] (last context frame + n generated)
    reward       one batched IDM call on all N videos -> per-head logits [N, n, C_h]
    advantage    rlir.kernels.idm_advantage: exact-match reward per video, group-normalised advantages
                 (advantage.credit = frame: per generated frame instead, broadcast to that frame's slots)
    logprob_old  (loss.old_logprobs = recompute) no-grad teacher-forced log-probs as old log-probs
    logprob_ref  (loss.beta > 0, loss.kl = k3) log-probs under the frozen reference model
    then inner_epochs passes over the N videos in minibatches of micro_batch_size x grad_accumulation (each
    prompt's samples shuffled, sample i of the prompt-major list in minibatch i mod M; see
    rlir.grpo.distributed.minibatch_orders, which splits every minibatch evenly over ranks):
    logprob      policy.logprobs on a micro-batch (differentiable)
                 (loss.kl = closed_form: policy.logprobs_and_kl, the exact KL to the reference, instead)
    loss         rlir.kernels.grpo_loss over the minibatch's loss_normaliser, so the micro-batch losses (and
                 their accumulated gradients) add up to the minibatch's
    backward
    optim        grad-norm clip, AdamW step, lr schedule step (once per minibatch)

Build from a config with ``GRPOTrainer.from_config(cfg)``, or pass your own policy / IDM / prompt sampler
to the constructor (see ``rlir.grpo.policy``).

Under torchrun (``torchrun --nproc_per_node N -m rlir train``) each rank runs this loop on B/N prompts: the
rollout RNG is seeded per prompt by (seed, step, global prompt index), batch-wide statistics are reduced over
ranks and the world model is wrapped by ``parallel.strategy``, so N ranks compute the updates of one process
with the same global batch (rlir.grpo.distributed says how; tests/distributed check it).
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from rlir.kernels.group_advantage import _batch_std
from rlir.kernels import (aggregate_tokens, group_advantage, grpo_loss, idm_advantage, idm_reward, loss_normaliser,
                          trusted_inputs)
from rlir.optim import adamw_decaying_matrices, fused_adamw_supported, use_fused_adamw, warmup_schedule
from rlir.rewards import idm_logits
from rlir.profiling import PhaseTimer, peak_memory, reset_peak_memory
from rlir.profiling.memory import max_rss_bytes

from rlir.models.generators import EVAL, GroupGenerators

from . import checkpoint as ckpt
from .config import ConfigError, GRPOConfig, save_config
from .distributed import DataParallel, Parallel, check_divisible, minibatch_orders
from .logging import MetricsLogger, format_line
from .policy import Policy, Prompts, Rollout
from .prompts import PromptSampler

# Metrics that measure the machine, not the optimisation (left out when comparing runs).
MACHINE_METRIC_PREFIXES = ("time/", "perf/", "mem/")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", f"{name} requested but CUDA is not available")
    return device


def lr_lambda(cfg: GRPOConfig) -> Callable[[int], float]:
    """LR factor after ``u`` optimizer updates: linear warmup over warmup_steps GRPO steps, then constant or
    cosine down to min_lr_ratio at the last update."""
    ups = cfg.updates_per_step
    return warmup_schedule(cfg.optim.warmup_steps * ups, cfg.train.steps * ups, cfg.optim.schedule,
                           cfg.optim.min_lr_ratio)


class Deferred:
    """A metric finished on the host after the step's one read: ``fn(*args)`` with every tensor in ``args``
    replaced by its value (floats; lists for 1-d tensors). ``fn`` returns a value, or a dict of metrics."""

    def __init__(self, fn: Callable, args: tuple):
        self.fn, self.args = fn, args


class GRPOTrainer:
    """GRPO on a ``Policy`` with an IDM reward.

    policy: the world model (see rlir.grpo.policy); idm: frames [N, n+1, 3, h, w] -> list of [N, n, C_h]
    logits (frozen); prompts: a PromptSampler (or anything with next() -> Prompts and state_dict /
    load_state_dict); eval_prompts: fixed held-out Prompts for evaluation; eval_idm: a second IDM for
    evaluation only; out_dir: where metrics, TensorBoard events and checkpoints go (None: nowhere).
    """

    def __init__(self, cfg: GRPOConfig, policy: Policy, idm: nn.Module, prompts: PromptSampler, *,
                 eval_prompts: Optional[Prompts] = None, eval_idm: Optional[nn.Module] = None,
                 out_dir=None, device: Optional[torch.device] = None, head_names: Optional[Sequence[str]] = None,
                 resume_step: Optional[int] = None, parallel: Optional[Parallel] = None):
        self.cfg = cfg
        self.policy, self.idm, self.prompts = policy, idm, prompts
        self.closed_form_kl = cfg.loss.beta > 0 and cfg.loss.kl == "closed_form"
        if self.closed_form_kl and not policy.has_closed_form_kl:
            raise ConfigError("loss.kl", f"'closed_form' needs a policy with logprobs_and_kl, which "
                              f"{type(policy).__name__} does not implement: use k3")
        self.eval_prompts, self.eval_idm = eval_prompts, eval_idm
        self.device = device if device is not None else resolve_device(cfg.device)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.head_names = list(head_names) if head_names is not None else None
        for module in (idm, eval_idm):
            if module is not None:
                module.eval().requires_grad_(False)
        bf16 = cfg.train.bf16
        self.bf16 = self.device.type == "cuda" and (bf16 == "true" or (bf16 == "auto" and torch.cuda.is_bf16_supported()))

        self.parallel = parallel if parallel is not None else Parallel.current()
        check_divisible(cfg, self.parallel)
        if self.parallel.distributed and not hasattr(prompts, "next_shard"):
            raise ConfigError("parallel", f"{type(prompts).__name__} has no next_shard(rank, world_size): the "
                              f"prompt sampler must hand each rank its share of the global batch")

        # Every random stream of a step is seeded from (seed, step): the rollout per prompt, the minibatch order
        # per epoch (rlir.models.generators, rlir.grpo.distributed); the global RNG only by this.
        torch.manual_seed(cfg.seed)
        self.step_count = 0
        # The world model under parallel.strategy; FSDP shards it here, before the optimizer takes its parameters.
        self.scoring = DataParallel(policy, cfg.parallel.strategy, self.parallel, bf16=self.bf16)

        params = list(policy.trainable_parameters())
        if not params:
            raise ValueError("the policy has no trainable parameters")
        self.optimizer = adamw_decaying_matrices(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                                 betas=cfg.optim.betas, eps=cfg.optim.adam_eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.fused_adamw = fused_adamw_supported(self.params)
        if self.fused_adamw:
            use_fused_adamw(self.optimizer)

        self.logger: Optional[MetricsLogger] = None
        self.open_logger(resume_step)
        self.history: List[Dict[str, float]] = []

    def open_logger(self, resume_step: Optional[int] = None) -> None:
        """Metrics to out_dir (rank 0 only); ``resume_step`` drops what an interrupted run logged after it."""
        cfg = self.cfg
        if self.out_dir is not None and self.parallel.is_main and self.logger is None:
            self.logger = MetricsLogger(self.out_dir, jsonl=cfg.log.jsonl, tensorboard=cfg.log.tensorboard,
                                        stdout=cfg.log.stdout, resume_step=resume_step)

    # ---- construction from a config --------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: GRPOConfig, *, out_dir=None, resume: bool = False) -> "GRPOTrainer":
        """Build models, data and trainer from ``cfg`` (and load the latest checkpoint under out_dir with resume)."""
        from .builders import build_run
        from .distributed import init_distributed

        out_dir = Path(out_dir if out_dir is not None else cfg.out)
        if resume and not ckpt.list_checkpoints(out_dir / "checkpoints"):
            raise FileNotFoundError(f"--resume: no checkpoint under {out_dir / 'checkpoints'}")
        parallel, device = init_distributed(cfg.device)  # under torchrun: this rank's device (else a no-op)
        device = device if device is not None else resolve_device(cfg.device)
        run = build_run(cfg, device)
        trainer = cls(cfg, run.policy, run.idm, run.prompts, eval_prompts=run.eval_prompts, eval_idm=run.eval_idm,
                      device=device, head_names=run.head_names, parallel=parallel)
        trainer.out_dir = out_dir
        resume_step = trainer.resume(out_dir / "checkpoints") if resume else None
        if parallel.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out_dir / "config.yaml")
        trainer.open_logger(resume_step)
        return trainer

    # ---- helpers --------------------------------------------------------------------------------------

    def autocast(self):
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def rollout_generators(self, local_prompts: int) -> GroupGenerators:
        """This step's generators for this rank's prompts: prompt b of the global batch draws from (seed, step, b)."""
        first = self.parallel.rank * local_prompts
        return GroupGenerators.seeded(self.cfg.seed, self.step_count, range(first, first + local_prompts), self.device)

    def _micro_batches(self, order: torch.Tensor):
        """This rank's rows of each minibatch (its share: minibatch_size / N), in micro-batches."""
        mbs, micro = self.cfg.minibatch_size // self.parallel.world_size, self.cfg.train.micro_batch_size
        for start in range(0, len(order), mbs):
            mb = order[start:start + mbs]
            yield [mb[i:i + micro] for i in range(0, len(mb), micro)]

    def _no_grad_logprobs(self, fn, rollout: Rollout, order: torch.Tensor) -> torch.Tensor:
        """fn(rollout, idx) over micro-batches in the order of the first update, scattered back to rows."""
        out = torch.empty_like(rollout.old_logp)
        with torch.no_grad(), self.autocast(), self.scoring.gathered():
            for micro_batches in self._micro_batches(order):
                for idx in micro_batches:
                    out[idx] = fn(rollout, idx).float()
        return out

    def frame_advantages(self, frame_match: torch.Tensor, rollout: Rollout,
                         scale: Optional[str] = None) -> torch.Tensor:
        """Per-frame credit: frame k of every video is compared with frame k of the other G - 1 samples of
        its prompt (same commanded action), and each log-prob slot gets its frame's advantage -> [N, S]."""
        if rollout.slot_frame is None:
            raise ConfigError("advantage.credit", f"'frame' needs Rollout.slot_frame, which "
                              f"{type(self.policy).__name__}.rollout does not set")
        a = self.cfg.advantage
        n_rows, n = frame_match.shape
        by_frame = frame_match.float().t().reshape(-1)  # frame-major: groups of G stay contiguous
        adv = group_advantage(by_frame, group_size=rollout.num_samples, scale=scale or a.scale,
                              estimator=a.estimator, eps=a.eps)
        return adv.view(n, n_rows).t()[:, rollout.slot_frame.to(frame_match.device)].contiguous()

    # ---- one GRPO step --------------------------------------------------------------------------------

    def step(self) -> Dict[str, float]:
        """One GRPO step; returns its metrics. The policy's rollout validates the prompts once (one host read);
        everything after it runs inside ``trusted_inputs()`` and keeps its metrics on the device, read back
        with one ``tolist`` at the end: a step has the same few host syncs whatever the micro-batch size,
        number of frames, denoising steps or inner epochs (tests/grpo/test_host_syncs.py counts them)."""
        cfg = self.cfg
        g = cfg.rollout.group_size
        timer = PhaseTimer()
        if self.device.type == "cuda":
            reset_peak_memory(self.device)
        start = time.perf_counter()

        par = self.parallel
        with timer.phase("data"):
            prompts = self.prompts.next_shard(par.rank, par.world_size) if par.distributed else self.prompts.next()
        self.policy.eval()
        with timer.phase("rollout"), torch.no_grad(), self.autocast(), self.scoring.gathered():
            rollout = self.policy.rollout(prompts, g, generator=self.rollout_generators(len(prompts)))
        with trusted_inputs():
            m = self._to_host(self._trusted_step(rollout, timer))
        for _ in range(int(m["optim/skipped_updates"]) if par.is_main else 0):
            warnings.warn(f"step {self.step_count + 1}: non-finite gradient norm; update skipped")

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        self.step_count += 1
        n_rows = len(rollout) * par.world_size  # every rank's videos
        n_frames, slots = rollout.actions.shape[1], rollout.slots
        phases = timer.breakdown()
        m["time/step"] = elapsed
        for name, seconds in phases.items():
            m[f"time/{name}"] = seconds
        m["perf/videos_per_s"] = n_rows / elapsed
        m["perf/frames_per_s"] = n_rows * n_frames / elapsed
        m["perf/tokens_per_s"] = n_rows * slots / elapsed
        m["perf/rollout_tokens_per_s"] = n_rows * slots / max(phases.get("rollout", 0.0), 1e-9)
        if self.device.type == "cuda":
            m["mem/peak_gib"] = peak_memory(self.device) / 2**30
        else:
            m["mem/max_rss_gib"] = max_rss_bytes() / 2**30
        self._last_phases = phases
        return m

    def _trusted_step(self, rollout: Rollout, timer: PhaseTimer) -> Dict[str, Any]:
        """decode -> reward -> advantage -> (old / reference log-probs) -> updates, on validated inputs; the
        metrics stay tensors (see ``_to_host``)."""
        cfg = self.cfg
        g = cfg.rollout.group_size
        with timer.phase("decode"), torch.no_grad(), self.autocast():
            frames = self.policy.decode(rollout)
        with timer.phase("reward"), self.autocast():
            logits = idm_logits(self.idm, frames, cfg.reward.idm_batch_size)
        # advantage.scale batch over several ranks: the group advantages unscaled here, then divided by the std
        # of every rank's rewards (_global_rollout_stats).
        batch_std = cfg.advantage.scale == "batch" and self.parallel.distributed
        scale = "none" if batch_std else cfg.advantage.scale
        with timer.phase("advantage"):
            if cfg.advantage.credit == "frame":
                rew = idm_reward(logits, rollout.actions, mode=cfg.reward.mode)
                adv = self.frame_advantages(rew.frame_match, rollout, scale)
            else:
                rew, adv = idm_advantage(logits, rollout.actions, group_size=g, mode=cfg.reward.mode,
                                         scale=scale, estimator=cfg.advantage.estimator, eps=cfg.advantage.eps)
        with timer.phase("comm") if self.parallel.distributed else contextlib.nullcontext():
            adv, stats = self._global_rollout_stats(rollout, rew, adv, batch_std)
        prompts = len(rollout) // g * self.parallel.world_size
        orders = minibatch_orders(cfg.seed, self.step_count, cfg.train.inner_epochs, prompts, g,
                                  cfg.videos_per_step // cfg.minibatch_size, self.parallel)
        # One host-to-device copy for every epoch's order (non-blocking), not one per micro-batch.
        orders = list(torch.stack(orders).to(self.device, non_blocking=True))

        old = rollout.old_logp
        if cfg.loss.old_logprobs == "recompute":
            with timer.phase("logprob_old"):
                old = self._no_grad_logprobs(self.policy.logprobs, rollout, orders[0])
        ref = None
        if cfg.loss.beta > 0 and not self.closed_form_kl:
            with timer.phase("logprob_ref"):
                ref = self._no_grad_logprobs(self.policy.reference_logprobs, rollout, orders[0])

        m = self._rollout_metrics(rollout, stats)
        m.update(self._update(rollout, old, ref, adv, orders, timer))
        return m

    def _global_rollout_stats(self, rollout: Rollout, rew, adv: torch.Tensor, batch_std: bool):
        """-> (this rank's advantages, the step's statistics over every rank): rewards and advantages
        gathered (small: one value per video, or per slot with frame credit), NLL and head-accuracy sums
        all-reduced. With ``batch_std`` the advantages are divided by the std of all ranks' rewards, as
        group_advantage's scale="batch" does in one process."""
        par, a = self.parallel, self.cfg.advantage
        reward = par.all_gather_rows(rew.reward.float())
        if batch_std:
            values = par.all_gather_rows(rew.frame_match.float()) if a.credit == "frame" else reward
            denom = _batch_std(values.reshape(-1)) + a.eps
            adv = torch.where(denom > 0, adv / torch.where(denom > 0, denom, 1.0), 0.0)
        frames = float(rollout.actions.shape[0] * rollout.actions.shape[1])
        sums = torch.cat([torch.stack([(rollout.old_logp * rollout.mask).sum().double(),
                                       rollout.mask.sum().double()]),
                          rew.head_accuracy.double() * frames])
        sums = par.all_reduce(sums)
        heads = sums[2:] / (frames * par.world_size)
        return adv, {"reward": reward, "adv": par.all_gather_rows(adv), "nll": sums[0], "tokens": sums[1],
                     "head_acc": heads}

    @staticmethod
    def _to_host(metrics: Dict[str, Any]) -> Dict[str, float]:
        """Every tensor in ``metrics`` (0-d or 1-d; also inside lists and callables' arguments) read back with
        one ``tolist``, as float64 (fp32 values convert exactly), then each ``Deferred`` finished on the host."""
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

    def _rollout_metrics(self, rollout: Rollout, stats: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        """Reward and advantage metrics of the whole step (every rank's videos; see _global_rollout_stats)."""
        g = rollout.num_samples
        r, adv = stats["reward"], stats["adv"]
        names = self.head_names or [f"head{i}" for i in range(len(stats["head_acc"]))]
        return {
            "reward/mean": r.nanmean(),
            "reward/std": r.std() if r.numel() > 1 else 0.0,
            "reward/min": r.min(),
            "reward/max": r.max(),
            "adv/mean": adv.mean(),
            "adv/std": adv.std() if adv.numel() > 1 else 0.0,
            "adv/abs_max": adv.abs().max(),
            "adv/zero_group_frac": (r.view(-1, g).amax(1) == r.view(-1, g).amin(1)).float().mean(),
            "rollout/nll_per_token": Deferred(lambda nll, count: -nll / max(1, int(count)),
                                              (stats["nll"], stats["tokens"])),
            "reward/head_acc": Deferred(lambda acc: {f"reward/head_acc/{n}": a for n, a in zip(names, acc)},
                                        (stats["head_acc"],)),
        }

    def _update(self, rollout: Rollout, old: torch.Tensor, ref: Optional[torch.Tensor], adv: torch.Tensor,
                orders: List[torch.Tensor], timer: PhaseTimer) -> Dict[str, Any]:
        cfg, lc, par = self.cfg, self.cfg.loss, self.parallel
        self.policy.train()
        mask = rollout.mask
        minibatches = [mb for order in orders for mb in self._micro_batches(order)]
        # Every minibatch's loss normaliser (its tokens or sequences on every rank), on the device: no host read;
        # one all-reduce for the step.
        denoms = torch.stack([loss_normaliser(mask[torch.cat(mb)], lc.loss_agg) for mb in minibatches])
        if par.distributed:
            with timer.phase("comm"):
                denoms = par.all_reduce(denoms)
        # DDP and FSDP average the ranks' gradients; scaled by N, each rank's loss makes that the sum.
        grad_scale = self.scoring.grad_scale
        lrs = []
        # Per minibatch: (norm, [(loss, tokens, loss metrics, first-update deviation or None)]), as tensors.
        records = []
        for k, (micro_batches, denom) in enumerate(zip(minibatches, denoms)):
            first = k == 0
            self.optimizer.zero_grad(set_to_none=True)
            micro_records = []
            for i, idx in enumerate(micro_batches):
                with self.scoring.sync(last=i == len(micro_batches) - 1):
                    with timer.phase("logprob"), self.autocast():
                        if self.closed_form_kl:
                            logp, kl = self.scoring(self.policy.logprobs_and_kl, rollout, idx)
                        else:
                            logp = self.scoring(self.policy.logprobs, rollout, idx)
                    with timer.phase("loss"):
                        loss, lm = grpo_loss(logp.float(), old[idx], adv[idx], mask[idx],
                                             None if ref is None else ref[idx], eps_low=lc.eps_low,
                                             eps_high=lc.eps_high, delta=lc.delta,
                                             beta=0.0 if self.closed_form_kl else lc.beta,
                                             loss_agg=lc.loss_agg, is_level=lc.is_level, normaliser=denom)
                        if self.closed_form_kl:
                            loss = loss + lc.beta * aggregate_tokens(kl.float(), mask[idx], lc.loss_agg, denom)
                            lm["kl"] = aggregate_tokens(kl.detach().float(), mask[idx])
                    with timer.phase("backward"):
                        (loss * grad_scale if grad_scale != 1.0 else loss).backward()
                deviation = None
                if first:
                    with torch.no_grad():
                        deviation = ((logp.detach().float() - old[idx]).abs() * mask[idx]).max()
                micro_records.append((loss.detach(), mask[idx].sum(), lm, deviation))
            with timer.phase("optim"):
                max_norm = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm is not None else float("inf")
                norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
                lrs.append(self.optimizer.param_groups[0]["lr"])
                self._optimizer_step(norm)
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            # FSDP: the norm is a replicated DTensor (the global norm); its local value is the number.
            records.append((norm.to_local() if hasattr(norm, "to_local") else norm, micro_records))
        keys = list(records[0][1][0][2])

        # Sums over micro-batches (float64, on the device) and, over ranks, one all-reduce each for sums and max.
        micro = [r for _, mr in records for r in mr]
        tokens = torch.stack([t for _, t, _, _ in micro]).double()
        lm_sums = (torch.stack([torch.stack([lm[key] for key in keys]) for _, _, lm, _ in micro]).double()
                   * tokens[:, None]).sum(0)
        losses = torch.stack([torch.stack([loss for loss, _, _, _ in mr]).double().sum() for _, mr in records])
        sums = torch.cat([losses, tokens.sum()[None], lm_sums])
        first_dev = torch.stack([d for _, _, _, d in micro if d is not None]).max().double()
        if par.distributed:
            with timer.phase("comm"):
                sums, first_dev = par.all_reduce(sums), par.all_reduce(first_dev, "max")
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
            m["optim/skipped_updates"] = float(sum(not math.isfinite(n) for n in norms))  # step() warns
            return m

        return {"update": Deferred(finish, (sums, first_dev, [norm for norm, _ in records]))}

    def _optimizer_step(self, norm: torch.Tensor) -> None:
        """AdamW step unless the gradient norm is non-finite. The fused AdamW kernel skips the update on the
        device when its ``found_inf`` is 1 (as under a GradScaler), so this reads nothing back; other
        optimizers fall back to a host check."""
        if self.fused_adamw:
            self.optimizer.found_inf = (~torch.isfinite(norm)).float()
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
        elif math.isfinite((norm.to_local() if hasattr(norm, "to_local") else norm).item()):
            self.optimizer.step()

    # ---- evaluation -----------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> Dict[str, float]:
        """Reward on the fixed held-out prompts, generated by the policy's evaluation sampler (the one
        ``rlir eval`` uses) from fixed generators, one per prompt (the training RNG streams are not touched, so
        evaluating never changes a run). Over N ranks each generates its share of the prompts, and the
        metrics are reduced: they do not depend on N."""
        if self.eval_prompts is None:
            return {}
        cfg, par = self.cfg, self.parallel
        start = time.perf_counter()
        self.policy.eval()
        lo, hi = par.shard(len(self.eval_prompts))
        prompts = _prompt_rows(self.eval_prompts, lo, hi)
        m = {}
        with self.autocast(), self.scoring.gathered():
            frames = None
            if hi > lo:
                gen = GroupGenerators.seeded(cfg.seed, 0, range(lo, hi), self.device, stream=EVAL)
                frames = self.policy.generate(prompts, cfg.eval.num_samples, sampler="eval", generator=gen)
                actions = prompts.actions.to(frames.device).repeat_interleave(cfg.eval.num_samples, 0)
            for prefix, idm in (("eval", self.idm), ("eval_idm", self.eval_idm)):
                if idm is None:
                    continue
                heads = len(self.head_names) if self.head_names else len(getattr(idm, "head_sizes", [0]))
                if frames is not None:
                    out = idm_reward(idm_logits(idm, frames, cfg.reward.idm_batch_size), actions,
                                     mode=cfg.reward.mode)
                    r = out.reward.double()
                    n = float(actions.shape[0] * actions.shape[1])
                    sums = torch.cat([torch.stack([r.nansum(), (~r.isnan()).sum().double(), r.new_tensor(n)]),
                                      out.head_accuracy.double() * n])
                else:  # a rank without prompts: zeros of the same shape
                    sums = torch.zeros(3 + heads, dtype=torch.float64, device=self.device)
                sums = par.all_reduce(sums).tolist()
                m[f"{prefix}/reward_mean"] = sums[0] / sums[1] if sums[1] else float("nan")
                names = self.head_names or [f"head{i}" for i in range(len(sums) - 3)]
                for name, acc in zip(names, sums[3:]):
                    m[f"{prefix}/head_acc/{name}"] = acc / sums[2] if sums[2] else float("nan")
        m["time/eval"] = time.perf_counter() - start
        return m

    # ---- the loop -------------------------------------------------------------------------------------

    def train(self, steps: Optional[int] = None) -> List[Dict[str, float]]:
        """Run until train.steps (or ``steps`` more steps); returns the metrics of the steps run."""
        cfg = self.cfg
        end = cfg.train.steps if steps is None else min(cfg.train.steps, self.step_count + steps)
        if self.step_count == 0 and cfg.train.eval_interval and cfg.eval.at_start and self.eval_prompts is not None:
            em = self.evaluate()
            self._log(0, em, "eval step 0 | " + " ".join(f"{k} {v:.4f}" for k, v in em.items()))
        ran = []
        saved_at = None
        while self.step_count < end:
            m = self.step()
            k = self.step_count
            if cfg.train.eval_interval and k % cfg.train.eval_interval == 0:
                m.update(self.evaluate())
            self.history.append(m)
            ran.append(m)
            if k % cfg.train.log_interval == 0 or k == end:
                self._log(k, m, format_line(k, cfg.train.steps, m, self._last_phases))
            if self.out_dir is not None and cfg.train.checkpoint_interval and k % cfg.train.checkpoint_interval == 0:
                self.save_checkpoint()
                saved_at = k
        if self.out_dir is not None and ran and saved_at != self.step_count:
            self.save_checkpoint()
        return ran

    def _log(self, step: int, m: Dict[str, float], line: str) -> None:
        if self.logger is not None:
            self.logger.log(step, m, line)

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()

    # ---- checkpoints ----------------------------------------------------------------------------------

    def trainer_state(self) -> dict:
        """What trainer.pt holds: step, lr schedule, the global RNGs and the sampler's position. (Every random
        stream of a step is derived from (seed, step), so no generator state is needed; the world model and
        the optimizer are the DCP shards, or ``optimizer`` here for a policy without an nn.Module.)"""
        state = {
            "step": self.step_count,
            "scheduler": self.scheduler.state_dict(),
            "rng": ckpt.rng_state(),
            "sampler": self.prompts.state_dict(),
        }
        if self.scoring.module is None:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def sharded_state(self) -> dict:
        """The DCP state dict of the world model and AdamW state: every rank's shards under FSDP, keys
        ``model.<name>`` under every strategy (so a checkpoint resumes with any number of ranks and strategy)."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model, optim = get_state_dict(self.scoring.module, self.optimizer)
        return {"model": model, "optim": optim}

    def save_checkpoint(self, root=None) -> Path:
        """Every rank calls this (a collective under torchrun): the DCP shards from every rank, the rest from rank 0."""
        root = Path(root) if root is not None else self.out_dir / "checkpoints"
        meta = {"config": self.cfg.to_dict()}
        if self.scoring.module is None:  # a policy without an nn.Module model: format 1, one process
            return ckpt.save_checkpoint(root, self.step_count, self.policy.state_dict(), self.trainer_state(),
                                        meta=meta, keep_last=self.cfg.train.keep_last)
        weights = self.scoring.full_state_dict() if self.cfg.parallel.consolidated_weights else None
        return ckpt.save_checkpoint(root, self.step_count, weights, self.trainer_state(), meta=meta,
                                    keep_last=self.cfg.train.keep_last, sharded=self.sharded_state())

    def load_checkpoint(self, path) -> int:
        """Restore world model, optimizer, scheduler, RNG states, sampler position and step from ``path`` (a
        collective under torchrun); returns the step."""
        policy_state, state, meta = ckpt.load_checkpoint(path)
        if ckpt.is_sharded(path):
            if self.scoring.module is None:
                raise ValueError(f"{path}: a sharded checkpoint needs a policy with an nn.Module model")
            from torch.distributed.checkpoint.state_dict import set_state_dict

            sharded = self.sharded_state()
            ckpt.load_sharded(path, sharded)
            set_state_dict(self.scoring.module, self.optimizer, model_state_dict=sharded["model"],
                           optim_state_dict=sharded["optim"])
            return self._restore_trainer_state(state)
        if self.parallel.distributed:
            raise ValueError(f"{path}: a format-1 checkpoint (no DCP shards) resumes in one process only")
        return self.restore(policy_state, state)

    def resume(self, root) -> int:
        """Load the newest checkpoint under ``root`` that loads (a newer one that does not is skipped with a
        warning naming it); returns its step. FileNotFoundError if none does."""
        for _, path in reversed(ckpt.list_checkpoints(root)):
            try:
                return self.load_checkpoint(path)
            except Exception as error:  # noqa: BLE001 - any unreadable file: JSON, DCP, safetensors, torch
                if self.parallel.is_main:
                    warnings.warn(f"{path}: cannot be loaded ({type(error).__name__}: {error}); trying an older "
                                  f"checkpoint")
        raise FileNotFoundError(f"--resume: no loadable checkpoint under {root}")

    def restore(self, policy_state: Dict[str, torch.Tensor], state: dict) -> int:
        """Restore from a loaded format-1 checkpoint (``rlir.grpo.checkpoint.load_checkpoint``); returns the step."""
        self.policy.load_state_dict(policy_state)
        self.optimizer.load_state_dict(state["optimizer"])
        return self._restore_trainer_state(state)

    def _restore_trainer_state(self, state: dict) -> int:
        if self.fused_adamw:  # a checkpoint from before the fused optimizer carries fused=None and CPU steps
            use_fused_adamw(self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        self.prompts.load_state_dict(state["sampler"])
        self.step_count = int(state["step"])
        return self.step_count


def _prompt_rows(prompts: Prompts, lo: int, hi: int) -> Prompts:
    """Prompts lo..hi-1."""
    ca = None if prompts.context_actions is None else prompts.context_actions[lo:hi]
    return Prompts(prompts.context[lo:hi], prompts.actions[lo:hi], ca)
