"""One GRPO step of the Crafter AR config, end to end: ``GRPOTrainer.step`` against a straightforward loop.

The straightforward loop (``StraightforwardGRPO``) is what a user writes first, over the same models, prompts
and config:

    rollout    every code is sampled by re-running the world model over the whole sequence so far: no KV cache
               and no shared prefill. The B*G samples are batched (each token is one forward over [B*G, L]),
               which is already kinder than looping over the samples one by one.
    decode     the tokenizer decodes all videos in one call (the same call as ours), after the real last
               context frame.
    reward     the IDM is called once per video; the exact-match reward is computed in plain PyTorch.
    advantage  (r - mean_g) / (std_g + eps) per group, in plain PyTorch.
    logprob    the model's full logits [n, F, V] are materialised, then log_softmax + gather.
    loss       the clipped GRPO objective in plain PyTorch, token-mean, with the same micro-batches and
               gradient accumulation as the trainer; then backward, grad-norm clip and AdamW.

Both sides draw tokens with ``rlir.models.sampling.sample_tokens`` from generators seeded alike, so they
sample the same videos (tests/benchmarks/test_bench_grpo_step.py checks this and that rewards, advantages,
log-probs, loss and gradients agree). Steps alternate between the two, so load on the machine hits both.

The no-cache rollout is quadratic in the video length; the full config (B=4, G=8, 7 frames of 64 codes) takes
several minutes a step on a 2-core CPU, so on CPU the default is 3 frames, with everything else as configured
(models, frame size, B, G, micro-batches). The shape used is in the JSON.

Run (from anywhere; config paths are relative to the repository root):
    OMP_NUM_THREADS=1 python benchmarks/bench_grpo_step.py [--prompts 4] [--group-size 8] [--frames 3]
        [--repeats 2] [--set KEY=VALUE ...] [--out DIR]
writes benchmarks/results/grpo_step_<cpu|cuda>.json.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import write_results  # noqa: E402
from rlir.grpo import ARPolicy, GRPOTrainer, PromptSampler, Prompts, load_config  # noqa: E402
from rlir.grpo.builders import build_datasets, build_run  # noqa: E402
from rlir.grpo.config import GRPOConfig  # noqa: E402
from rlir.grpo.trainer import resolve_device  # noqa: E402
from rlir.models.sampling import sample_tokens  # noqa: E402
from rlir.models.tokenizer import VQTokenizer  # noqa: E402
from rlir.profiling import PhaseTimer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PHASES = ["data", "rollout", "decode", "reward", "advantage", "logprob", "loss", "backward", "optim"]


# ---- the straightforward GRPO step, one small function per phase ---------------------------------------

@torch.no_grad()
def sample_without_cache(model, context_codes: torch.Tensor, actions: torch.Tensor,
                         context_actions: Optional[torch.Tensor], group_size: int, temperature: float,
                         generator: Optional[torch.Generator] = None):
    """G continuations of each prompt, one code at a time, re-running the model over the whole sequence for
    every code. context_codes [B, C, F], actions [B, n, H] -> (tokens [B*G, n, F], log-probs [B*G, n, F]);
    row b*G + g is sample g of prompt b."""
    n_frames, codes_per_frame = actions.shape[1], context_codes.shape[2]
    if context_actions is None:
        context_actions = actions[:, :0]
    sequence = model.sequence(context_codes, context_actions).repeat_interleave(group_size, 0)
    action_tokens = model.action_token_ids(actions).repeat_interleave(group_size, 0)
    tokens, logprobs = [], []
    for k in range(n_frames):
        sequence = torch.cat((sequence, action_tokens[:, k]), dim=1)
        for _ in range(codes_per_frame):
            logits = model.output(model.forward_tokens(sequence)[:, -1])
            ids, logp = sample_tokens(logits, temperature, generator=generator)
            sequence = torch.cat((sequence, ids[:, None]), dim=1)
            tokens.append(ids)
            logprobs.append(logp)
    shape = (-1, n_frames, codes_per_frame)
    return torch.stack(tokens, 1).view(shape), torch.stack(logprobs, 1).view(shape)


@torch.no_grad()
def decode_videos(tokenizer, last_context_frames: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The real last context frame (uint8 [N, 3, s, s]) + the sampled codes decoded -> uint8 frames
    [N, n+1, 3, s, s], as ``Policy.decode``."""
    frames = VQTokenizer.to_uint8(tokenizer.decode(tokens.reshape(*tokens.shape[:2], *tokenizer.code_grid)))
    return torch.cat((last_context_frames[:, None].to(frames.device), frames), dim=1)


@torch.no_grad()
def rewards_one_video_at_a_time(idm, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Fraction of frames whose argmax action (every head) equals the commanded one, one IDM call per video."""
    rewards = []
    for video, commanded in zip(frames, actions):
        head_logits = idm(video[None])  # list of [1, n, C_h]
        predicted = torch.stack([logits[0].argmax(-1) for logits in head_logits], dim=-1)  # [n, H]
        rewards.append((predicted == commanded).all(-1).float().mean())
    return torch.stack(rewards)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    groups = rewards.view(-1, group_size)
    advantages = (groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + eps)
    return advantages.flatten()


def logprobs_from_full_logits(model, context_codes: torch.Tensor, tokens: torch.Tensor,
                              all_actions: torch.Tensor, temperature: float) -> torch.Tensor:
    """Teacher-forced log-probs [N, n*F] of the sampled codes: full logits, log_softmax, gather."""
    n_context = context_codes.shape[1]
    logits = model(torch.cat((context_codes, tokens), dim=1), all_actions)[:, n_context - 1:]  # [N, n, F, V]
    logp = torch.log_softmax(logits.float() / temperature, dim=-1).gather(-1, tokens[..., None])[..., 0]
    return logp.flatten(1)


def clipped_grpo_token_losses(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                              eps_low: float, eps_high: float) -> torch.Tensor:
    """Per-token -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    return -torch.min(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)


class StraightforwardGRPO:
    """The GRPO step a user writes first (see the module docstring), over an ARWorldModel, a VQ tokenizer and
    an IDM. Supports the Crafter AR config's loss settings (token-mean, token-level ratios, no KL, old
    log-probs from the rollout, exact-match reward, group-normalised GRPO advantages). The learning rate is
    constant and weight decay applies to every parameter: the trainer's schedule and parameter groups cost
    nothing to time. ``autocast``: the trainer's, so both sides compute in the same precision."""

    def __init__(self, cfg: GRPOConfig, model: nn.Module, tokenizer: nn.Module, idm: nn.Module,
                 prompts: PromptSampler, device: torch.device, autocast=None):
        unsupported = {
            "loss.beta": cfg.loss.beta != 0, "loss.loss_agg": cfg.loss.loss_agg != "token-mean",
            "loss.is_level": cfg.loss.is_level != "token", "loss.delta": cfg.loss.delta is not None,
            "loss.old_logprobs": cfg.loss.old_logprobs != "rollout", "reward.mode": cfg.reward.mode != "exact",
            "advantage": (cfg.advantage.scale, cfg.advantage.estimator) != ("group", "grpo"),
            "rollout.top_k/top_p": cfg.rollout.top_k is not None or cfg.rollout.top_p is not None,
        }
        bad = [key for key, is_bad in unsupported.items() if is_bad]
        if bad:
            raise ValueError(f"the straightforward GRPO step does not implement these settings: {bad}")
        self.cfg, self.model, self.tokenizer, self.idm, self.prompts = cfg, model, tokenizer, idm, prompts
        self.device = device
        self.autocast = autocast or contextlib.nullcontext
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.adam_eps,
                                           weight_decay=o.weight_decay)
        self.rollout_generator = torch.Generator(device).manual_seed(cfg.seed)
        self.shuffle_generator = torch.Generator().manual_seed(cfg.seed + 1)

    def step(self, timer: PhaseTimer) -> Dict[str, float]:
        cfg, g = self.cfg, self.cfg.rollout.group_size
        with timer.phase("data"):
            prompts: Prompts = self.prompts.next().to(self.device)
        self.model.eval()
        with timer.phase("rollout"), torch.no_grad(), self.autocast():
            context = self.tokenizer.encode(prompts.context).reshape(*prompts.context.shape[:2], -1).long()
            tokens, old_logp = sample_without_cache(self.model, context, prompts.actions, prompts.context_actions,
                                                    g, cfg.rollout.temperature, self.rollout_generator)
            old_logp = old_logp.flatten(1).float()
            context = context.repeat_interleave(g, 0)
            actions = prompts.actions.long().repeat_interleave(g, 0)
            all_actions = actions if prompts.context_actions is None else torch.cat(
                (prompts.context_actions.long().repeat_interleave(g, 0), actions), dim=1)
        with timer.phase("decode"), self.autocast():
            frames = decode_videos(self.tokenizer, prompts.context[:, -1].repeat_interleave(g, 0), tokens)
        with timer.phase("reward"), self.autocast():
            rewards = rewards_one_video_at_a_time(self.idm, frames, actions)
        with timer.phase("advantage"):
            advantages = group_advantages(rewards, g, cfg.advantage.eps)
        losses = self._update(context, tokens, all_actions, old_logp, advantages, timer)
        return {"reward/mean": rewards.mean().item(), "loss/loss": sum(losses) / len(losses)}

    def _update(self, context, tokens, all_actions, old_logp, advantages, timer: PhaseTimer) -> List[float]:
        cfg = self.cfg
        micro, minibatch = cfg.train.micro_batch_size, cfg.minibatch_size
        max_norm = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm is not None else float("inf")
        self.model.train()
        losses = []
        for _ in range(cfg.train.inner_epochs):
            order = torch.randperm(len(tokens), generator=self.shuffle_generator)
            for start in range(0, len(order), minibatch):
                rows = order[start:start + minibatch].to(self.device)
                minibatch_tokens = old_logp[rows].numel()
                self.optimizer.zero_grad(set_to_none=True)
                minibatch_loss = 0.0
                for idx in rows.split(micro):
                    with timer.phase("logprob"), self.autocast():
                        logp = logprobs_from_full_logits(self.model, context[idx], tokens[idx], all_actions[idx],
                                                         cfg.rollout.temperature)
                    with timer.phase("loss"):
                        token_losses = clipped_grpo_token_losses(logp.float(), old_logp[idx], advantages[idx],
                                                                 cfg.loss.eps_low, cfg.loss.eps_high)
                        loss = token_losses.sum() / minibatch_tokens
                    with timer.phase("backward"):
                        loss.backward()
                    minibatch_loss += loss.item()
                with timer.phase("optim"):
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                losses.append(minibatch_loss)
        return losses


# ---- the benchmark ----------------------------------------------------------------------------------------

def build_pair(cfg: GRPOConfig, device: torch.device):
    """(GRPOTrainer, StraightforwardGRPO) on the same initial weights, drawing the same prompts and samples."""
    run = build_run(cfg, device)
    if not isinstance(run.policy, ARPolicy):
        raise ValueError(f"the straightforward GRPO step is written for the AR world model, the config builds a "
                         f"{type(run.policy).__name__}")
    trainer = GRPOTrainer(cfg, run.policy, run.idm, run.prompts, device=device)
    # Its own dataset, so that neither side reads episodes the other one has already decoded and cached.
    dataset, _, _ = build_datasets(cfg, run.policy.tokenizer.frame_size, list(run.policy.model.head_sizes))
    sampler = PromptSampler(dataset, cfg.rollout.prompts_per_step, context_frames=cfg.data.context_frames,
                            n_frames=cfg.rollout.n_frames, seed=cfg.seed)
    naive = StraightforwardGRPO(cfg, copy.deepcopy(run.policy.model), run.policy.tokenizer, run.idm, sampler, device,
                                autocast=trainer.autocast)
    return trainer, naive


def time_ours(trainer: GRPOTrainer) -> Dict[str, float]:
    metrics = trainer.step()
    times = {name: metrics.get(f"time/{name}", 0.0) for name in PHASES}
    times["total"] = metrics["time/step"]
    return times


def time_straightforward(naive: StraightforwardGRPO) -> Dict[str, float]:
    timer = PhaseTimer()
    start = time.perf_counter()
    naive.step(timer)
    if naive.device.type == "cuda":
        torch.cuda.synchronize(naive.device)
    times = {name: timer.breakdown().get(name, 0.0) for name in PHASES}
    times["total"] = time.perf_counter() - start
    return times


def median_times(runs: List[Dict[str, float]]) -> Dict[str, float]:
    return {name: statistics.median(run[name] for run in runs) for name in runs[0]}


def rows_for(provider: str, shape: Dict[str, int], dtype: str, times: Dict[str, float]) -> List[Dict[str, object]]:
    """Harness-style rows (one per phase + total), so report.py and the generic tooling can read them."""
    return [dict(op=f"grpo_step/{name}", shape=shape, dtype=dtype, mode="full", provider=provider,
                 median_ms=seconds * 1e3) for name, seconds in times.items()]


def shape_overrides(args) -> List[str]:
    return [f"rollout.prompts_per_step={args.prompts}", f"rollout.group_size={args.group_size}",
            f"rollout.n_frames={args.frames}", *args.set]


def load_bench_config(args) -> GRPOConfig:
    quiet = ["train.eval_interval=0", "log.stdout=false", "log.tensorboard=false", "log.jsonl=false"]
    return load_config(REPO / args.config, shape_overrides(args) + quiet)


def main(argv=None):
    parser = argparse.ArgumentParser(description="One GRPO step: GRPOTrainer vs a straightforward loop.")
    parser.add_argument("--config", default="configs/crafter_ar.yaml", help="relative to the repository root")
    parser.add_argument("--prompts", type=int, default=4, help="B (the config: 4)")
    parser.add_argument("--group-size", type=int, default=8, help="G (the config: 8)")
    parser.add_argument("--frames", type=int, default=None,
                        help="generated frames per video (default: the config's 7 on CUDA, 3 on CPU)")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps of each")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.frames is None:
        args.frames = 7 if torch.cuda.is_available() else 3
    out = Path(args.out).resolve() if args.out else None
    os.chdir(REPO)  # the config's data and checkpoint paths are relative to the repository root
    cfg = load_bench_config(args)
    device = resolve_device(cfg.device)
    trainer, naive = build_pair(cfg, device)
    print(f"GRPO step on {device}: B={args.prompts} G={args.group_size} frames={args.frames} "
          f"x {trainer.policy.model.config.tokens_per_frame} codes, {torch.get_num_threads()} threads", flush=True)
    # Warm-up: one step of ours (one-off allocations, lazy tables); the no-cache loop is too slow to warm up,
    # so it only draws the same prompts (the same episodes are decoded on both sides, and later steps align).
    time_ours(trainer)
    naive.prompts.next()
    ours_runs, naive_runs = [], []
    for repeat in range(args.repeats):
        ours_runs.append(time_ours(trainer))
        naive_runs.append(time_straightforward(naive))
        print(f"repeat {repeat}: ours {ours_runs[-1]['total']:.2f} s, straightforward {naive_runs[-1]['total']:.2f} s",
              flush=True)
    ours, straightforward = median_times(ours_runs), median_times(naive_runs)
    print(f"\n{'phase':<10} {'straightforward':>16} {'ours':>10} {'speedup':>8}")
    for name in [*PHASES, "total"]:
        speedup = straightforward[name] / ours[name] if ours[name] > 0 else float("nan")
        print(f"{name:<10} {straightforward[name]:>14.3f} s {ours[name]:>8.3f} s {speedup:>7.1f}x")
    model_cfg = trainer.policy.model.config
    shape = {"B": args.prompts, "G": args.group_size, "frames": args.frames,
             "tokens_per_frame": model_cfg.tokens_per_frame, "micro_batch": cfg.train.micro_batch_size,
             "grad_accumulation": cfg.train.grad_accumulation}
    dtype = "bf16 autocast" if trainer.bf16 else "fp32"
    rows = rows_for("straightforward", shape, dtype, straightforward) + rows_for("rlir", shape, dtype, ours)
    extra = {
        "config": args.config, "overrides": shape_overrides(args), "repeats": args.repeats,
        "shape": shape, "world_model": {k: model_cfg[k] for k in ("n_layers", "d_model", "n_heads", "codebook_size")},
        "seconds": {"straightforward": straightforward, "rlir": ours},
        "seconds_per_repeat": {"straightforward": naive_runs, "rlir": ours_runs},
        "speedup": {name: straightforward[name] / ours[name] for name in straightforward if ours[name] > 0},
        "straightforward": "no KV cache (every code re-runs the model over the whole sequence; the B*G samples "
                           "batched), one IDM call per video, full logits + log_softmax + gather, plain-PyTorch "
                           "rewards, advantages and clipped loss",
    }
    write_results("grpo_step", rows, out, extra)
    print(f"end-to-end speedup {extra['speedup']['total']:.1f}x")


if __name__ == "__main__":
    main()
