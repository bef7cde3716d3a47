"""The RLIR GRPO loop: rollout -> decode -> IDM reward -> group advantages -> clipped policy-gradient updates.

One step (every phase inside ``PhaseTimer.phase``, i.e. an NVTX range plus a timer; see rlir.profiling.phases):

    data         B prompts from the resumable sampler (context frames + commanded actions)
    rollout      policy.rollout(prompts, G): N = B*G videos, recording old log-probs      (no grad)
    decode       policy.decode -> uint8 [N, n+1, 3, h, w] (last context frame + n generated)
    reward       one batched IDM call on all N videos -> per-head logits [N, n, C_h]
    advantage    rlir.grpo.advantages: the reward of each video (rlir.kernels.idm_reward), group-normalised
                 (advantage.credit = frame: per generated frame instead, broadcast to that frame's slots)
    logprob_old  (loss.old_logprobs = recompute, or a policy that records none, or bf16) no-grad teacher-forced
                 log-probs as old log-probs (loss.old_logprobs = current: none, each update's own, detached)
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
to the constructor (see ``rlir.policies.policy``).

Under torchrun each rank runs this loop on B/N prompts and N ranks compute the updates of one process with the
same global batch (rlir.grpo.distributed says how; tests/distributed check it).
"""
from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from rlir.kernels import aggregate_tokens, grpo_loss, loss_normaliser, trusted_inputs
from rlir.models.generators import GroupGenerators
from rlir.optim import (adamw_decaying_matrices, clip_and_step, fused_adamw_supported, use_fused_adamw,
                        warmup_schedule)
from rlir.parallel import Parallel, bf16_enabled, resolve_device
from rlir.policies import Policy, Prompts, Rollout
from rlir.profiling import PhaseTimer
from rlir.rewards import idm_logits

from . import checkpoint as ckpt
from .advantages import advantages
from .config import GRPOConfig
from .distributed import (DataParallel, check_divisible, check_shardable, global_rollout_stats, micro_batches,
                          update_orders)
from .held_out import held_out_metrics
from .logging import MetricsLogger, format_line
from .metrics import StepClock, max_deviation, rollout_metrics, to_host, update_metrics
from .model_checks import check_closed_form_kl
from .prompts import PromptSampler


def lr_lambda(cfg: GRPOConfig) -> Callable[[int], float]:
    """LR factor after ``u`` optimizer updates: linear warmup over warmup_steps GRPO steps, then constant or
    cosine down to min_lr_ratio at the last update."""
    ups = cfg.updates_per_step
    return warmup_schedule(cfg.optim.warmup_steps * ups, cfg.train.steps * ups, cfg.optim.schedule,
                           cfg.optim.min_lr_ratio)


class GRPOTrainer:
    """GRPO on a ``Policy`` with an IDM reward.

    policy: the world model (see rlir.policies.policy); idm: frames [N, n+1, 3, h, w] -> list of [N, n, C_h]
    logits (frozen); prompts: a PromptSampler (or anything with next() -> Prompts and state_dict /
    load_state_dict); eval_prompts: fixed held-out Prompts for evaluation; eval_idm: a second IDM for
    evaluation only; out_dir: where metrics, TensorBoard events and checkpoints go (None: nowhere).
    """

    def __init__(self, cfg: GRPOConfig, policy: Policy, idm: nn.Module, prompts: PromptSampler, *,
                 eval_prompts: Optional[Prompts] = None, eval_idm: Optional[nn.Module] = None,
                 out_dir=None, device: Optional[torch.device] = None, head_names: Optional[Sequence[str]] = None,
                 resume_step: Optional[int] = None, parallel: Optional[Parallel] = None, judge=None):
        self.cfg = cfg
        self.policy, self.idm, self.prompts = policy, idm, prompts
        self.closed_form_kl = cfg.loss.beta > 0 and cfg.loss.kl == "closed_form"
        if self.closed_form_kl:  # a policy built by hand, which loading the config could not check
            check_closed_form_kl(type(policy))
        self.eval_prompts, self.eval_idm, self.judge = eval_prompts, eval_idm, judge
        self.device = device if device is not None else resolve_device(cfg.device)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.head_names = list(head_names) if head_names is not None else None
        for module in (idm, eval_idm):
            if module is not None:
                module.eval().requires_grad_(False)
        self.bf16 = bf16_enabled(cfg.train.bf16, self.device)

        self.parallel = parallel if parallel is not None else Parallel.current()
        check_divisible(cfg, self.parallel)
        check_shardable(prompts, self.parallel)

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
        if self.out_dir is not None and self.parallel.is_main and self.logger is None:
            self.logger = MetricsLogger.for_run(self.out_dir, self.cfg, resume_step)

    # ---- construction from a config --------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: GRPOConfig, *, out_dir=None, resume: bool = False) -> "GRPOTrainer":
        """Build models, data and trainer from ``cfg`` (and load the latest checkpoint under out_dir with resume)."""
        from .builders import build_trainer

        return build_trainer(cls, cfg, out_dir=out_dir, resume=resume)

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

    # ---- one GRPO step --------------------------------------------------------------------------------

    def step(self) -> Dict[str, float]:
        """One GRPO step; returns its metrics. The policy's rollout validates the prompts once (one host read);
        everything after it runs inside ``trusted_inputs()`` and keeps its metrics on the device, read back
        with one ``tolist`` at the end: a step has the same few host syncs whatever the micro-batch size,
        number of frames, denoising steps or inner epochs (tests/grpo/test_host_syncs.py counts them)."""
        g, par = self.cfg.rollout.group_size, self.parallel
        timer, clock = PhaseTimer(), StepClock(self.device)

        with timer.phase("data"):
            prompts = self.prompts.next_shard(par.rank, par.world_size) if par.distributed else self.prompts.next()
        self.policy.eval()
        with timer.phase("rollout"), torch.no_grad(), self.autocast(), self.scoring.gathered():
            # HOST SYNC: the rollout checks the prompts' values once (its public boundary)
            rollout = self.policy.rollout(prompts, g, generator=self.rollout_generators(len(prompts)))
        with trusted_inputs():
            m = self._trusted_step(rollout, timer)
        m = to_host(m)  # HOST SYNC: every metric of the step read back at once
        for _ in range(int(m["optim/skipped_updates"]) if par.is_main else 0):
            warnings.warn(f"step {self.step_count + 1}: non-finite gradient norm; update skipped")
        self.step_count += 1
        self._last_phases = timer.breakdown()
        m.update(clock.throughput(self._last_phases, len(rollout) * par.world_size, rollout.actions.shape[1],
                                  rollout.slots))
        return m

    def _trusted_step(self, rollout: Rollout, timer: PhaseTimer) -> Dict[str, Any]:
        """decode -> reward -> advantage -> (old / reference log-probs) -> updates, on validated inputs; the
        metrics stay tensors (``rlir.grpo.metrics.to_host`` reads them back)."""
        cfg = self.cfg
        g = cfg.rollout.group_size
        with timer.phase("decode"), torch.no_grad(), self.autocast():
            frames = self.policy.decode(rollout)
        with timer.phase("reward"), self.autocast():
            logits = idm_logits(self.idm, frames, cfg.reward.idm_batch_size)
        with timer.phase("advantage"):
            rew, adv = advantages(logits, rollout, cfg.advantage, cfg.reward.mode, self.parallel,
                                  policy_name=type(self.policy).__name__)
        orders = update_orders(cfg, self.step_count, len(rollout), self.parallel, self.device)

        old = None if cfg.loss.old_logprobs == "current" else rollout.old_logp
        # Under bf16 the recorded log-probs are not the training forward's (the AR rollout runs on a bf16 copy, the
        # DiT's on a KV cache), so the first ratio would not be 1: rollout recomputes them there.
        if cfg.loss.old_logprobs == "recompute" or (cfg.loss.old_logprobs == "rollout" and (old is None or self.bf16)):
            with timer.phase("logprob_old"):
                old = self._no_grad_logprobs(self.policy.logprobs, rollout, orders[0])
        with timer.phase("comm") if self.parallel.distributed else contextlib.nullcontext():
            stats = global_rollout_stats(self.parallel, rollout, old, rew, adv)
        ref = None
        if cfg.loss.beta > 0 and not self.closed_form_kl:
            with timer.phase("logprob_ref"):
                ref = self._no_grad_logprobs(self.policy.reference_logprobs, rollout, orders[0])

        m = rollout_metrics(stats, g, self.head_names)
        m["update"] = self._update(rollout, old, ref, adv, orders, timer)
        return m

    def _update(self, rollout: Rollout, old: Optional[torch.Tensor], ref: Optional[torch.Tensor],
                adv: torch.Tensor, orders: List[torch.Tensor], timer: PhaseTimer):
        """inner_epochs passes of clipped policy-gradient updates, one optimizer step a minibatch; -> the
        loss/ and optim/ metrics (a Deferred, on the device). ``old`` None: each update's own log-probs,
        detached (loss.old_logprobs: current)."""
        lc, par = self.cfg.loss, self.parallel
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
                        loss, lm = grpo_loss(logp.float(), None if old is None else old[idx], adv[idx], mask[idx],
                                             None if ref is None else ref[idx], eps_low=lc.eps_low,
                                             eps_high=lc.eps_high, delta=lc.delta,
                                             beta=0.0 if self.closed_form_kl else lc.beta,
                                             loss_agg=lc.loss_agg, is_level=lc.is_level, normaliser=denom)
                        if self.closed_form_kl:
                            loss = loss + lc.beta * aggregate_tokens(kl.float(), mask[idx], lc.loss_agg, denom)
                            lm["kl"] = aggregate_tokens(kl.detach().float(), mask[idx])
                    with timer.phase("backward"):
                        (loss * grad_scale if grad_scale != 1.0 else loss).backward()
                deviation = max_deviation(logp, old[idx], mask[idx]) if first and old is not None else None
                micro_records.append((loss.detach(), mask[idx].sum(), lm, deviation))
            with timer.phase("optim"):
                lrs.append(self.optimizer.param_groups[0]["lr"])
                norm = clip_and_step(self.optimizer, self.params, self.cfg.optim.max_grad_norm, self.fused_adamw)
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            records.append((norm, micro_records))
        return update_metrics(records, lrs, par, timer)

    # ---- evaluation -----------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> Dict[str, float]:
        """Reward of the policy's evaluation sampler (the one ``rlir eval`` uses) on the fixed held-out prompts,
        with the reward IDM (``eval/``) and the evaluation IDM (``eval_idm/``), see ``rlir.grpo.held_out``; it never
        changes a run."""
        if self.eval_prompts is None:
            return {}
        start = time.perf_counter()
        self.policy.eval()
        with self.autocast(), self.scoring.gathered():
            m, videos = held_out_metrics(self.cfg, self.policy, self.eval_prompts,
                                         {"eval": self.idm, "eval_idm": self.eval_idm}, self.parallel, self.device,
                                         self.head_names, judge=self.judge)
        m["time/eval"] = time.perf_counter() - start
        if len(videos) and self.logger is not None:  # a no-op unless log.wandb
            self.logger.eval_videos(self.step_count, videos)
        return m

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
        return micro_batches(order, self.cfg.minibatch_size // self.parallel.world_size, self.cfg.train.micro_batch_size)

    def _no_grad_logprobs(self, fn, rollout: Rollout, order: torch.Tensor) -> torch.Tensor:
        """fn(rollout, idx) over micro-batches in the order of the first update, scattered back to rows."""
        out = torch.empty(rollout.mask.shape, dtype=torch.float32, device=rollout.mask.device)
        with torch.no_grad(), self.autocast(), self.scoring.gathered():
            for micro_batches in self._micro_batches(order):
                for idx in micro_batches:
                    out[idx] = fn(rollout, idx).float()
        return out

    # ---- checkpoints (rlir.grpo.checkpoint) -----------------------------------------------------------------

    def checkpoint_state(self) -> ckpt.TrainerState:
        """What a checkpoint saves of this run and restores into it: the run's own objects."""
        return ckpt.TrainerState(self.step_count, self.policy, self.scoring, self.optimizer, self.scheduler,
                                 self.prompts, self.fused_adamw, self.parallel)

    def trainer_state(self) -> dict:
        return ckpt.trainer_state(self.checkpoint_state())

    def save_checkpoint(self, root=None) -> Path:
        """Every rank calls this (a collective under torchrun); ``root`` defaults to out_dir/checkpoints."""
        return ckpt.save_trainer(self.checkpoint_state(), self.cfg,
                                 root if root is not None else self.out_dir / "checkpoints")

    def load_checkpoint(self, path) -> int:
        self.step_count = ckpt.load_trainer(self.checkpoint_state(), path)
        return self.step_count

    def resume(self, root) -> int:
        """Load the newest checkpoint under ``root`` that loads; returns its step."""
        self.step_count = ckpt.resume_trainer(self.checkpoint_state(), root)
        return self.step_count
