"""Sampling frames from an ARWorldModel with a static KV cache, recording per-token log-probs for GRPO.

Recorded log-probs are under the temperature-scaled *full* softmax, log softmax(logits / temperature)[id],
exactly what ``ARWorldModel.token_logprobs(..., temperature)`` computes teacher-forced, so GRPO's first
importance ratio is 1. That is the sampling distribution only when top_k and top_p are off: with them on,
tokens come from the truncated distribution while the log-probs (and GRPO's policy) stay the full one.
"""
from __future__ import annotations

from typing import Optional

import torch

from rlir.kernels import trusted_inputs

from .compiled import compile_mode, compiled_step, static_buffers, uses_cuda_graphs
from .generators import Generators, check_generators, exponential_like
from .kv_cache import LayerKVCache


def _check_sampling_args(temperature, top_k, top_p) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0 (use top_k=1 for greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")


def filter_logits(scaled: torch.Tensor, top_k: Optional[int] = None, top_p: Optional[float] = None) -> torch.Tensor:
    """Set to -inf every logit outside the top_k, then outside the smallest set holding top_p of the mass."""
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = scaled.topk(top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already hold top_p: the first one always stays.
        drop_sorted = probs.cumsum(dim=-1) - probs > top_p
        scaled = scaled.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return scaled


def sample_tokens(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                  top_p: Optional[float] = None, generator: Generators = None):
    """Sample one id per row of logits [N, V]; return (ids [N] int64, fp32 log-probs [N] under softmax(logits / T)).

    Draws exactly N*V exponentials from ``generator`` per call (argmax of p / Exp(1) samples from p,
    with no host sync), so two paths that see the same logits consume the RNG identically. A
    ``GroupGenerators`` (rlir.models.generators) draws each prompt group's rows from its own generator.
    """
    _check_sampling_args(temperature, top_k, top_p)
    scaled = logits.float() / temperature
    probs = filter_logits(scaled, top_k, top_p).softmax(dim=-1)
    noise = exponential_like(probs, generator)
    ids = (probs / noise).argmax(dim=-1)
    logp = scaled.log_softmax(dim=-1).gather(-1, ids[:, None])[:, 0]
    return ids, logp


@torch.no_grad()
def generate(model, context_tokens: torch.Tensor, actions: torch.Tensor, *,
             context_actions: Optional[torch.Tensor] = None, num_samples: int = 1, temperature: float = 1.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None,
             generator: Generators = None, use_cache: bool = True, compile=False):
    """Roll out ``num_samples`` (G) continuations of each of B prompts under commanded actions.

    context_tokens: [B, n_ctx * F] (or [B, n_ctx, F]) codes of the context frames.
    actions: [B, n_steps, H] class indices; actions[:, k] leads from frame n_ctx - 1 + k to the k-th generated frame.
    context_actions: [B, n_ctx - 1, H], the actions between context frames (required when n_ctx > 1).
    Returns (tokens [B*G, n_steps, F] int64, logprobs [B*G, n_steps, F] fp32); row b*G + g is sample g of prompt b.
    ``generator``: a torch.Generator, or a ``GroupGenerators`` with one generator per prompt (prompt b's samples
    then do not depend on the other prompts of the batch).

    With ``use_cache`` the B prompts are prefilled once and the KV cache is replicated G times; then
    each frame is sampled one code at a time, the frame's last code fed together with the next
    action's tokens. ``use_cache=False`` recomputes the whole sequence for every token from a prefill
    per sample (the reference the cached path is tested against; same RNG consumption).

    ``compile``: False runs the decode step eagerly. True runs ``model.decode_step`` (the one-token step over
    the static KV cache) under ``torch.compile(fullgraph=True)``, with mode "reduce-overhead" (CUDA graphs)
    on CUDA and the default mode elsewhere; a string picks the mode. Sampling stays outside the graph, so
    both draw the same tokens from one generator (log-probs equal up to float rounding). The first call for
    a shape compiles (seconds to a minute); later calls reuse the graphs. Needs ``use_cache``.
    """
    _check_sampling_args(temperature, top_k, top_p)
    mode = compile_mode(compile, context_tokens.device if isinstance(context_tokens, torch.Tensor) else None)
    if mode is not None and not use_cache:
        raise ValueError("compile=True needs use_cache=True (it compiles the static KV-cache decode step)")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
    f, n_heads = model.config.tokens_per_frame, model.num_action_heads
    if not isinstance(context_tokens, torch.Tensor) or context_tokens.ndim not in (2, 3):
        raise ValueError(f"context_tokens must be a [B, n_ctx * F] or [B, n_ctx, F] tensor, got "
                         f"{tuple(getattr(context_tokens, 'shape', ())) or type(context_tokens).__name__}")
    b = context_tokens.shape[0]
    if context_tokens.shape[-1] % f or (context_tokens.ndim == 3 and context_tokens.shape[-1] != f):
        raise ValueError(f"context_tokens must hold whole frames of tokens_per_frame={f} codes, "
                         f"got shape {tuple(context_tokens.shape)}")
    context = context_tokens.reshape(b, -1, f)
    check_generators(generator, b)
    n_ctx = context.shape[1]
    if not isinstance(actions, torch.Tensor) or actions.ndim != 3 or actions.shape[0] != b \
            or actions.shape[2] != n_heads or actions.shape[1] < 1:
        raise ValueError(f"actions must have shape [B={b}, n_steps >= 1, H={n_heads}], "
                         f"got {tuple(getattr(actions, 'shape', ())) or type(actions).__name__}")
    if context_actions is None:
        if n_ctx > 1:
            raise ValueError(f"context_actions [B, n_ctx - 1, H] is required with n_ctx={n_ctx} context frames")
        context_actions = actions[:, :0]
    elif not isinstance(context_actions, torch.Tensor) or tuple(context_actions.shape) != (b, n_ctx - 1, n_heads):
        raise ValueError(f"context_actions must have shape [B, n_ctx - 1, H] = {(b, n_ctx - 1, n_heads)}, "
                         f"got {tuple(getattr(context_actions, 'shape', ())) or type(context_actions).__name__}")
    n_steps = actions.shape[1]
    if n_ctx + n_steps > model.config.max_frames:
        raise ValueError(f"n_ctx + n_steps = {n_ctx + n_steps} frames exceeds max_frames={model.config.max_frames}")
    # The one host read of the values (none inside trusted_inputs()); everything after it runs trusted.
    model.check_prompt(context, actions, context_actions if n_ctx > 1 else None)
    with trusted_inputs():
        return _generate(model, context, context_actions, actions, num_samples, temperature, top_k, top_p,
                         generator, use_cache, mode)


def _generate(model, context, context_actions, actions, g, temperature, top_k, top_p, generator, use_cache,
              mode=None):
    b, n_ctx, f = context.shape
    n_heads, n_steps = model.num_action_heads, actions.shape[1]
    action_ids = model.action_token_ids(actions)
    prompt = torch.cat((model.sequence(context, context_actions), action_ids[:, 0]), dim=1)
    action_ids = action_ids.repeat_interleave(g, dim=0)
    if use_cache:
        length = (n_ctx + n_steps) * model.frame_stride - n_heads - 1
        cache = model.new_cache(b, max_len=length)
        last_hidden = model.forward_tokens(prompt, cache)[:, -1].repeat_interleave(g, dim=0)
        cache = cache.repeat_interleave(g)
        # The whole sequence so far, which a model's per-position inputs (frame actions, previous frame) read.
        history = torch.empty(b * g, length, dtype=torch.long, device=prompt.device)
        history[:, :prompt.shape[1]] = prompt.repeat_interleave(g, dim=0)

        def step(feed):
            start = cache.length
            history[:, start:start + feed.shape[1]] = feed
            return model.forward_tokens(feed, cache, history)[:, -1]

        if mode is not None:
            return _decode_compiled(model, mode, cache, history, prompt.shape[1], last_hidden, action_ids, n_steps,
                                    f, temperature, top_k, top_p, generator)
    else:
        seq = prompt.repeat_interleave(g, dim=0)
        last_hidden = model.forward_tokens(seq)[:, -1]

        def step(feed):
            nonlocal seq
            seq = torch.cat((seq, feed), dim=1)
            return model.forward_tokens(seq)[:, -1]

    return _decode_loop(model.output(last_hidden), lambda feed: model.output(step(feed)), action_ids, n_steps, f,
                        temperature, top_k, top_p, generator)


def _decode_loop(logits, next_logits, action_ids, n_steps, f, temperature, top_k, top_p, generator):
    """Sample n_steps frames of f codes from the first code's ``logits``; ``next_logits(feed)`` runs one decode
    step (a code, or the frame's last code with the next action's tokens) and returns the next logits."""
    n_rows = logits.shape[0]
    tokens = torch.empty(n_rows, n_steps, f, dtype=torch.long, device=logits.device)
    logprobs = torch.empty(n_rows, n_steps, f, dtype=torch.float32, device=logits.device)
    for k in range(n_steps):
        for j in range(f):
            ids, logp = sample_tokens(logits, temperature, top_k, top_p, generator)
            tokens[:, k, j], logprobs[:, k, j] = ids, logp
            if j < f - 1:
                feed = ids[:, None]
            elif k < n_steps - 1:
                feed = torch.cat((ids[:, None], action_ids[:, k + 1]), dim=1)
            else:
                break
            logits = next_logits(feed)
    return tokens, logprobs


# ---- the compiled rollout (rlir.models.compiled) -------------------------------------------------------

def _decode_step(model, ids, cache_k, cache_v, history, positions):
    """The static-shape step (CUDA; CUDA graphs): positions a device tensor, attention over the whole cache."""
    return model.decode_step(ids, cache_k, cache_v, history, positions)


def _prefix_decode_step(model, ids, cache_k, cache_v, history, start: int):
    """The CPU step: ``start`` a symbolic int (compiled with dynamic=True: one graph for every position) and
    attention over the filled prefix only, as the eager step. On CPU a decode step at rollout batch sizes is
    bound by attention's reads of the cache and the GEMMs, so masked attention over the whole static cache
    (the CUDA-graph step) would cost more than compilation saves (measured 0.8x eager at 32 videos)."""
    cache = LayerKVCache(cache_k, cache_v, start)
    return model.output(model.forward_tokens(ids, cache, history)[:, -1])


def _static_step(device) -> bool:
    """Which compiled step runs on ``device``: the static one on CUDA, the prefix one elsewhere (a function so
    that the tests can run the static one on CPU)."""
    return device.type == "cuda"


def _decode_compiled(model, mode, cache, history, start, last_hidden, action_ids, n_steps, f, temperature, top_k,
                     top_p, generator):
    """The decode loop of ``_generate`` with the step compiled: the same feeds, RNG draws and outputs. On CUDA
    the static step (``model.decode_step``; positions are slices of one device arange, so no host-to-device
    copy a step), elsewhere the prefix step with a symbolic start."""
    length = history.shape[1]
    device = history.device
    static = _static_step(device)
    step_fn = compiled_step(model, _decode_step if static else _prefix_decode_step, mode, device, dynamic=not static)
    buffers = static_buffers(model, "decode", history, *cache.k.unbind(0), *cache.v.unbind(0))
    history, cache_k, cache_v = buffers[0], buffers[1:1 + len(cache.k)], buffers[1 + len(cache.k):]
    positions = torch.arange(length, device=device)
    cuda_graphs = uses_cuda_graphs(mode, device)

    def next_logits(feed):
        nonlocal start
        s = feed.shape[1]
        history[:, start:start + s] = feed
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        logits = step_fn(model, feed, cache_k, cache_v, history, positions[start:start + s] if static else start)
        start += s
        return logits

    return _decode_loop(model.output(last_hidden), next_logits, action_ids, n_steps, f, temperature, top_k, top_p,
                        generator)
