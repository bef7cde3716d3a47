"""One GRPO step of the Crafter AR config, end to end: ``GRPOTrainer.step`` against a straightforward loop and a
competent one.

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

The competent loop (``CompetentGRPO``) is what a user who knows the usual tricks writes, so the ratio to it says
what rlir adds beyond "we cache":

    rollout    KV-cached generation, as HF ``generate`` does: every one of the B*G samples is prefilled (batched,
               but without sharing one prefill per prompt), then one code a step over its KV cache.
    reward     one batched IDM call on all videos; the exact-match reward in plain PyTorch.
    logprob    log_softmax + gather over the full logits; loss the plain-PyTorch clipped loss (as above).

All sides draw tokens with ``rlir.models.sampling.sample_tokens`` from generators seeded alike (one per prompt,
from (seed, step, prompt), as the trainer) and take the trainer's minibatch order, so they
sample the same videos (tests/benchmarks/test_bench_grpo_step.py checks this and that rewards, advantages,
log-probs, loss and gradients agree). Steps alternate between them, so load on the machine hits all alike.

The no-cache rollout is quadratic in the video length; the full config (B=4, G=8, 7 frames of 64 codes) takes
several minutes a step on a 2-core CPU, so on CPU the default is 3 frames, with everything else as configured
(models, frame size, B, G, micro-batches). The shape used is in the JSON.

Run (from anywhere; config paths are relative to the repository root):
    OMP_NUM_THREADS=1 python benchmarks/bench_grpo_step.py [--prompts 4] [--group-size 8] [--frames 3]
        [--repeats 2] [--set KEY=VALUE ...] [--out DIR] [--skip-straightforward]
writes benchmarks/results/grpo_step_<cpu|cuda>.json (the competent loop under "competent").
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
from rlir.grpo import GRPOTrainer, PromptSampler, load_config  # noqa: E402
from rlir.grpo.builders import build_datasets, build_run  # noqa: E402
from rlir.grpo.config import GRPOConfig  # noqa: E402
from rlir.grpo.distributed import minibatch_orders  # noqa: E402
from rlir.parallel import resolve_device  # noqa: E402
from rlir.models.generators import GroupGenerators  # noqa: E402
from rlir.models.kv_cache import KVCache  # noqa: E402
from rlir.models.sampling import sample_tokens  # noqa: E402
from rlir.models.tokenizer import VQTokenizer  # noqa: E402
from rlir.policies import ARPolicy, Prompts  # noqa: E402
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
def sample_with_kv_cache(model, context_codes: torch.Tensor, actions: torch.Tensor,
                         context_actions: Optional[torch.Tensor], group_size: int, temperature: float,
                         generator: Optional[torch.Generator] = None):
    """G continuations of each prompt with a KV cache, HF-generate style: each of the B*G samples gets its own
    prefill (batched, nothing shared), then one code a step over the cache. Same arguments, outputs and RNG
    draws as ``sample_without_cache``."""
    n_frames, codes_per_frame = actions.shape[1], context_codes.shape[2]
    if context_actions is None:
        context_actions = actions[:, :0]
    action_tokens = model.action_token_ids(actions).repeat_interleave(group_size, 0)
    prompt = torch.cat((model.sequence(context_codes, context_actions).repeat_interleave(group_size, 0),
                        action_tokens[:, 0]), dim=1)
    rows, heads = prompt.shape[0], action_tokens.shape[2]
    length = prompt.shape[1] + n_frames * codes_per_frame + (n_frames - 1) * heads - 1
    # The cache in the dtype the layers compute in (bf16 under autocast), as attention needs q, k, v alike.
    device_type = prompt.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else model.dtype
    cfg = model.config
    cache = KVCache(cfg.n_layers, rows, cfg.n_kv_heads, length, cfg.d_model // cfg.n_heads, dtype=dtype,
                    device=prompt.device)
    history = torch.empty(rows, length, dtype=torch.long, device=prompt.device)  # read by per-position inputs
    history[:, :prompt.shape[1]] = prompt
    logits = model.output(model.forward_tokens(prompt, cache)[:, -1])
    tokens, logprobs = [], []
    for k in range(n_frames):
        for j in range(codes_per_frame):
            ids, logp = sample_tokens(logits, temperature, generator=generator)
            tokens.append(ids)
            logprobs.append(logp)
            if j < codes_per_frame - 1:
                feed = ids[:, None]
            elif k < n_frames - 1:
                feed = torch.cat((ids[:, None], action_tokens[:, k + 1]), dim=1)
            else:
                break
            start = cache.length
            history[:, start:start + feed.shape[1]] = feed
            logits = model.output(model.forward_tokens(feed, cache, history)[:, -1])
    shape = (-1, n_frames, codes_per_frame)
    return torch.stack(tokens, 1).view(shape), torch.stack(logprobs, 1).view(shape)


@torch.no_grad()
def rewards_batched(idm, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """The same reward with one IDM call on all videos."""
    predicted = torch.stack([logits.argmax(-1) for logits in idm(frames)], dim=-1)  # [N, n, H]
    return (predicted == actions).all(-1).float().mean(1)


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


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """(r - mean_g) / (std_g + eps), eps being group_advantage's, which the trainer uses."""
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

    sample = staticmethod(sample_without_cache)
    rewards = staticmethod(rewards_one_video_at_a_time)

    def __init__(self, cfg: GRPOConfig, model: nn.Module, tokenizer: nn.Module, idm: nn.Module,
                 prompts: PromptSampler, device: torch.device, autocast=None):
        unsupported = {
            "loss.beta": cfg.loss.beta != 0, "loss.loss_agg": cfg.loss.loss_agg != "token-mean",
            "loss.is_level": cfg.loss.is_level != "token", "loss.delta": cfg.loss.delta is not None,
            "loss.old_logprobs": cfg.loss.old_logprobs != "rollout", "reward.mode": cfg.reward.mode != "exact",
            "advantage": (cfg.advantage.scale, cfg.advantage.estimator) != ("group", "grpo"),
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
        self.steps_done = 0  # the trainer's step_count: its RNG streams are seeded from (seed, step)

    def step(self, timer: PhaseTimer) -> Dict[str, float]:
        cfg, g = self.cfg, self.cfg.rollout.group_size
        with timer.phase("data"):
            prompts: Prompts = self.prompts.next().to(self.device)
        self.model.eval()
        with timer.phase("rollout"), torch.no_grad(), self.autocast():
            context = self.tokenizer.encode(prompts.context).reshape(*prompts.context.shape[:2], -1).long()
            generators = GroupGenerators.seeded(cfg.seed, self.steps_done, range(len(prompts)), self.device)
            tokens, old_logp = self.sample(self.model, context, prompts.actions, prompts.context_actions,
                                           g, cfg.rollout.temperature, generators)
            old_logp = old_logp.flatten(1).float()
            context = context.repeat_interleave(g, 0)
            actions = prompts.actions.long().repeat_interleave(g, 0)
            all_actions = actions if prompts.context_actions is None else torch.cat(
                (prompts.context_actions.long().repeat_interleave(g, 0), actions), dim=1)
        with timer.phase("decode"), self.autocast():
            frames = decode_videos(self.tokenizer, prompts.context[:, -1].repeat_interleave(g, 0), tokens)
        with timer.phase("reward"), self.autocast():
            rewards = self.rewards(self.idm, frames, actions)
        with timer.phase("advantage"):
            advantages = group_advantages(rewards, g)
        losses = self._update(context, tokens, all_actions, old_logp, advantages, timer)
        return {"reward/mean": rewards.mean().item(), "loss/loss": sum(losses) / len(losses)}

    def _update(self, context, tokens, all_actions, old_logp, advantages, timer: PhaseTimer) -> List[float]:
        cfg = self.cfg
        micro, minibatch = cfg.train.micro_batch_size, cfg.minibatch_size
        max_norm = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm is not None else float("inf")
        self.model.train()
        losses = []
        g = cfg.rollout.group_size
        orders = minibatch_orders(cfg.seed, self.steps_done, cfg.train.inner_epochs, len(tokens) // g, g,
                                  len(tokens) // minibatch)
        self.steps_done += 1
        for order in orders:
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


class CompetentGRPO(StraightforwardGRPO):
    """The straightforward step with the two things a competent user does first (module docstring): a KV-cached
    rollout (each sample prefilled on its own, no shared prefill) and one batched IDM call."""

    sample = staticmethod(sample_with_kv_cache)
    rewards = staticmethod(rewards_batched)


COMPETENT = ("KV-cached generation (HF generate style: every sample prefilled on its own, no shared prefill), one "
             "batched IDM call, full logits + log_softmax + gather, plain-PyTorch rewards, advantages and clipped loss")


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


def build_competent(cfg: GRPOConfig, trainer: GRPOTrainer) -> CompetentGRPO:
    """A CompetentGRPO on the trainer's initial weights (call before the trainer steps), with its own sampler."""
    policy = trainer.policy
    dataset, _, _ = build_datasets(cfg, policy.tokenizer.frame_size, list(policy.model.head_sizes))
    sampler = PromptSampler(dataset, cfg.rollout.prompts_per_step, context_frames=cfg.data.context_frames,
                            n_frames=cfg.rollout.n_frames, seed=cfg.seed)
    return CompetentGRPO(cfg, copy.deepcopy(policy.model), policy.tokenizer, trainer.idm, sampler, trainer.device,
                         autocast=trainer.autocast)


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
    parser.add_argument("--skip-straightforward", action="store_true",
                        help="time ours and the competent loop only (the no-cache rollout is the slow part)")
    args = parser.parse_args(argv)
    if args.frames is None:
        args.frames = 7 if torch.cuda.is_available() else 3
    out = Path(args.out).resolve() if args.out else None
    os.chdir(REPO)  # the config's data and checkpoint paths are relative to the repository root
    cfg = load_bench_config(args)
    device = resolve_device(cfg.device)
    trainer, naive = build_pair(cfg, device)
    competent = build_competent(cfg, trainer)
    print(f"GRPO step on {device}: B={args.prompts} G={args.group_size} frames={args.frames} "
          f"x {trainer.policy.model.config.tokens_per_frame} codes, {torch.get_num_threads()} threads", flush=True)
    # Warm-up: one step of ours and of the competent loop (one-off allocations, lazy tables); the no-cache loop
    # is too slow to warm up, so it only draws the same prompts (the same episodes are decoded on every side, and
    # later steps align).
    time_ours(trainer)
    time_straightforward(competent)
    naive.prompts.next()
    ours_runs, naive_runs, competent_runs = [], [], []
    for repeat in range(args.repeats):
        ours_runs.append(time_ours(trainer))
        competent_runs.append(time_straightforward(competent))
        line = f"repeat {repeat}: ours {ours_runs[-1]['total']:.2f} s, competent {competent_runs[-1]['total']:.2f} s"
        if not args.skip_straightforward:
            naive_runs.append(time_straightforward(naive))
            line += f", straightforward {naive_runs[-1]['total']:.2f} s"
        print(line, flush=True)
    ours, competent_times = median_times(ours_runs), median_times(competent_runs)
    straightforward = median_times(naive_runs) if naive_runs else None
    print(f"\n{'phase':<10} {'straightforward':>16} {'competent':>10} {'ours':>10} {'vs straightf.':>14} "
          f"{'vs competent':>13}")
    for name in [*PHASES, "total"]:
        def ratio(theirs):
            return f"{theirs[name] / ours[name]:.1f}x" if theirs and ours[name] > 0 else "-"
        plain = f"{straightforward[name]:>14.3f} s" if straightforward else f"{'-':>16}"
        print(f"{name:<10} {plain} {competent_times[name]:>8.3f} s {ours[name]:>8.3f} s {ratio(straightforward):>14} "
              f"{ratio(competent_times):>13}")
    model_cfg = trainer.policy.model.config
    shape = {"B": args.prompts, "G": args.group_size, "frames": args.frames,
             "tokens_per_frame": model_cfg.tokens_per_frame, "micro_batch": cfg.train.micro_batch_size,
             "grad_accumulation": cfg.train.grad_accumulation}
    dtype = "bf16 autocast" if trainer.bf16 else "fp32"
    rows = rows_for("rlir", shape, dtype, ours) + rows_for("competent", shape, dtype, competent_times)
    if straightforward:
        rows = rows_for("straightforward", shape, dtype, straightforward) + rows
    extra = {
        "config": args.config, "overrides": shape_overrides(args), "repeats": args.repeats,
        "shape": shape, "world_model": {k: model_cfg[k] for k in ("n_layers", "d_model", "n_heads", "codebook_size")},
        "seconds": {"rlir": ours, **({"straightforward": straightforward} if straightforward else {})},
        "seconds_per_repeat": {"rlir": ours_runs, **({"straightforward": naive_runs} if naive_runs else {})},
        "speedup": ({name: straightforward[name] / ours[name] for name in straightforward if ours[name] > 0}
                    if straightforward else {}),
        "straightforward": "no KV cache (every code re-runs the model over the whole sequence; the B*G samples "
                           "batched), one IDM call per video, full logits + log_softmax + gather, plain-PyTorch "
                           "rewards, advantages and clipped loss",
        "competent": {"description": COMPETENT, "seconds": competent_times, "seconds_per_repeat": competent_runs,
                      "speedup": {name: competent_times[name] / ours[name] for name in competent_times
                                  if ours[name] > 0}},
    }
    write_results("grpo_step", rows, out, extra)
    if straightforward:
        print(f"end-to-end speedup {extra['speedup']['total']:.1f}x vs straightforward", end=", ")
    print(f"{extra['competent']['speedup']['total']:.2f}x vs competent")


if __name__ == "__main__":
    main()
