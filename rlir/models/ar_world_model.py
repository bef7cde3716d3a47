"""MineWorld-style autoregressive world model: a Llama-like decoder over interleaved frame and action tokens.

Sequence layout for a clip of T frames (F = tokens_per_frame codes each) and T-1 actions (H heads each):

    [f0: F codes][a0: H tokens][f1: F codes][a1: H tokens] ... [f_{T-1}: F codes]

Action a_t is the transition from frame t to t+1. Token ids: frame codes are [0, codebook_size); head h's
class c is codebook_size + sum(head_sizes[:h]) + c. The model predicts frame tokens only, so the output
head has codebook_size logits: every code of frames 1..T-1 is predicted from everything before it (code 0
of frame t from the last action token of a_{t-1}, code j > 0 from code j-1 of frame t). Frame 0 is always
given, and action tokens are commanded, never predicted.

Optional inputs added to a position's token embedding (all causal: they read only earlier positions):
- frame_action_embedding: the action that led into the position's frame;
- previous_frame_input (needs frame_grid): for a position that predicts code (r, c) of frame t, the codes of
  frame t-1 at (r, c) and its four neighbours, plus row and column embeddings of (r, c). When frames are
  tile-aligned (Crafter at 72x72: one 8x8 code per tile), a move shifts the code grid by one cell, so the
  next code is usually one of those five: predicting it is a local choice the action selects, which a
  small model learns quickly, instead of a lookup at an action-dependent distance through attention.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from rlir.kernels import checking_values, fused_linear_logprobs, trusted_inputs

from .arguments import check_int
from .attention import BACKENDS, attention
from .kv_cache import KVCache, StaticKVCache
from .sampling import generate as _generate


_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _check_int_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype not in _INT_DTYPES or t.ndim != 3:
        raise ValueError(f"{name} must be a 3-D integer tensor, got "
                         f"{getattr(t, 'dtype', type(t).__name__)} of shape {tuple(getattr(t, 'shape', ()))}")


# The cells a code of frame t reads from frame t-1: its own and the four a one-tile move can bring into it.
NEIGHBOURHOOD = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on x [B, H, S, D] with cos/sin [S, D], computed in fp32."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat((-x2, x1), dim=-1) * sin).to(x.dtype)


class Block(nn.Module):
    """Pre-norm decoder block: GQA self-attention with RoPE, then a SwiGLU MLP."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, ffn_hidden: int, norm_eps: float):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        self.attention_norm = nn.RMSNorm(d_model, eps=norm_eps)
        self.wqkv = nn.Linear(d_model, (n_heads + 2 * n_kv_heads) * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, d_model, bias=False)
        self.ffn_norm = nn.RMSNorm(d_model, eps=norm_eps)
        self.w13 = nn.Linear(d_model, 2 * ffn_hidden, bias=False)
        self.w2 = nn.Linear(ffn_hidden, d_model, bias=False)

    def forward(self, x, cos, sin, layer: int, cache: Optional[KVCache], backend: str,
                mask: Optional[torch.Tensor] = None):
        """mask: None for causal attention over the cache's filled prefix; a bool [s, Skv] for a static cache
        (``ARWorldModel.decode_step``)."""
        b, s, _ = x.shape
        hd = self.head_dim
        q, k, v = self.wqkv(self.attention_norm(x)).split(
            [self.n_heads * hd, self.n_kv_heads * hd, self.n_kv_heads * hd], dim=-1)
        q = apply_rope(q.view(b, s, self.n_heads, hd).transpose(1, 2), cos, sin)
        k = apply_rope(k.view(b, s, self.n_kv_heads, hd).transpose(1, 2), cos, sin)
        v = v.view(b, s, self.n_kv_heads, hd).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        y = attention(q, k, v, causal=mask is None, mask=mask, backend=backend)
        x = x + self.wo(y.transpose(1, 2).reshape(b, s, self.n_heads * hd))
        gate, up = self.w13(self.ffn_norm(x)).chunk(2, dim=-1)
        return x + self.w2(F.silu(gate) * up)


def check_transformer_config(n_layers: int, d_model: int, n_heads: int, max_frames: int,
                             action_head_sizes) -> None:
    """The checks every world model's transformer config needs (ValueError naming the key)."""
    for name, value in (("n_layers", n_layers), ("d_model", d_model), ("n_heads", n_heads)):
        check_int(name, value)
    check_int("max_frames", max_frames, minimum=2)
    if not isinstance(action_head_sizes, (list, tuple)) or not action_head_sizes:
        raise ValueError(f"action_head_sizes must be a non-empty list of ints, got {action_head_sizes!r}")
    for size in action_head_sizes:
        check_int("action_head_sizes entries", size, minimum=2)
    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
    if (d_model // n_heads) % 2:
        raise ValueError(f"d_model / n_heads must be even for RoPE, got head dim {d_model // n_heads}")


class ARWorldModel(ModelMixin, ConfigMixin):
    """Action-conditioned token world model; ``save_pretrained``/``from_pretrained`` write config.json + safetensors.

    Config: codebook_size (frame code vocabulary), tokens_per_frame (e.g. 64 = 8x8 codes), action_head_sizes
    (classes per action head, e.g. [17]), n_layers, d_model, n_heads, n_kv_heads (GQA, divides n_heads),
    ffn_hidden (SwiGLU width; default 8/3 d_model rounded up to 64), max_frames (longest clip: RoPE and
    KV cache length), rope_theta, norm_eps, attn_backend (see ``rlir.models.attention``),
    frame_action_embedding: also add an embedding of action a_{t-1} to the input of every code of frame t
    (the action tokens stay in the sequence). Without it a code must fetch the action from the action
    tokens through attention first; a small model trained briefly never learns to (a 600-step model's
    held-out NLL was the same under shuffled actions), with it every position sees the action.
    frame_grid: [rows, cols] of the code grid (rows * cols = tokens_per_frame); previous_frame_input: see
    the module docstring.
    """

    @register_to_config
    def __init__(self, codebook_size: int = 512, tokens_per_frame: int = 64, action_head_sizes: Sequence[int] = (17,),
                 n_layers: int = 4, d_model: int = 256, n_heads: int = 8, n_kv_heads: int = 2,
                 ffn_hidden: Optional[int] = None, max_frames: int = 16, rope_theta: float = 10000.0,
                 norm_eps: float = 1e-5, attn_backend: str = "sdpa", frame_action_embedding: bool = False,
                 frame_grid: Optional[Sequence[int]] = None, previous_frame_input: bool = False):
        super().__init__()
        for name, value in (("codebook_size", codebook_size), ("tokens_per_frame", tokens_per_frame),
                            ("n_kv_heads", n_kv_heads)):
            check_int(name, value)
        check_transformer_config(n_layers, d_model, n_heads, max_frames, action_head_sizes)
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
        if ffn_hidden is None:
            ffn_hidden = -(-8 * d_model // 3 // 64) * 64
        check_int("ffn_hidden", ffn_hidden)
        if not isinstance(rope_theta, (int, float)) or isinstance(rope_theta, bool) or rope_theta <= 1:
            raise ValueError(f"rope_theta must be a number > 1, got {rope_theta!r}")
        if not isinstance(norm_eps, (int, float)) or isinstance(norm_eps, bool) or norm_eps <= 0:
            raise ValueError(f"norm_eps must be a number > 0, got {norm_eps!r}")
        if attn_backend not in BACKENDS:
            raise ValueError(f"attn_backend must be one of {list(BACKENDS)}, got {attn_backend!r}")
        if frame_grid is not None:
            if not isinstance(frame_grid, (list, tuple)) or len(frame_grid) != 2:
                raise ValueError(f"frame_grid must be [rows, cols], got {frame_grid!r}")
            for value in frame_grid:
                check_int("frame_grid entries", value)
            if frame_grid[0] * frame_grid[1] != tokens_per_frame:
                raise ValueError(f"frame_grid {list(frame_grid)} must hold tokens_per_frame={tokens_per_frame} codes")
        if previous_frame_input and frame_grid is None:
            raise ValueError("previous_frame_input needs frame_grid ([rows, cols] of the code grid)")

        self.head_sizes = tuple(action_head_sizes)
        self.num_action_heads = len(self.head_sizes)
        self.frame_stride = tokens_per_frame + self.num_action_heads  # tokens per [frame][action] step
        self.max_len = max_frames * self.frame_stride
        self.vocab_size = codebook_size + sum(self.head_sizes)
        self.attn_backend = attn_backend
        self.register_buffer("action_offsets", codebook_size + torch.tensor(
            [0, *self.head_sizes[:-1]]).cumsum(0), persistent=False)

        self.tok_embeddings = nn.Embedding(self.vocab_size, d_model)
        self.layers = nn.ModuleList(
            Block(d_model, n_heads, n_kv_heads, ffn_hidden, norm_eps) for _ in range(n_layers))
        self.norm = nn.RMSNorm(d_model, eps=norm_eps)
        self.output = nn.Linear(d_model, codebook_size, bias=False)
        self.frame_action_embeddings = (nn.Embedding(sum(self.head_sizes), d_model)
                                        if frame_action_embedding else None)
        self.previous_frame_input = bool(previous_frame_input)
        if self.previous_frame_input:
            rows, cols = frame_grid
            # index [F, 5] of each code's own cell and its up/down/left/right neighbours (-1 off the grid)
            r, c = torch.arange(rows * cols) // cols, torch.arange(rows * cols) % cols
            neighbours = [(r + dr, c + dc) for dr, dc in NEIGHBOURHOOD]
            index = torch.stack([torch.where((nr >= 0) & (nr < rows) & (nc >= 0) & (nc < cols), nr * cols + nc, -1)
                                 for nr, nc in neighbours], dim=1)
            self.register_buffer("neighbour_index", index, persistent=False)
            width = max(d_model // 4, 8)
            self.previous_frame_embeddings = nn.Embedding(codebook_size + 1, width)  # the last id pads
            self.previous_frame_proj = nn.Linear(len(NEIGHBOURHOOD) * width, d_model, bias=False)
            self.row_embeddings = nn.Embedding(rows, d_model)
            self.col_embeddings = nn.Embedding(cols, d_model)
        self._rope: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
        for block in self.layers:  # residual projections, GPT-2 style
            nn.init.normal_(block.wo.weight, std=0.02 / math.sqrt(2 * n_layers))
            nn.init.normal_(block.w2.weight, std=0.02 / math.sqrt(2 * n_layers))

    def _rope_tables(self, start: int, s: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        # Plain fp32 attributes, not buffers: model.to(bfloat16) must not round the rotation angles.
        device = torch.device(device)
        if device not in self._rope:
            hd = self.config.d_model // self.config.n_heads
            inv_freq = self.config.rope_theta ** (-torch.arange(0, hd, 2, dtype=torch.float64, device=device) / hd)
            angles = torch.arange(self.max_len, dtype=torch.float64, device=device)[:, None] * inv_freq
            angles = torch.cat((angles, angles), dim=-1)
            self._rope[device] = (angles.cos().float(), angles.sin().float())
        cos, sin = self._rope[device]
        return cos[start:start + s], sin[start:start + s]

    # ---- token layout -------------------------------------------------------------------------------

    def action_token_ids(self, actions: torch.Tensor) -> torch.Tensor:
        """Class indices [..., H] -> vocabulary ids [..., H]."""
        return actions.long() + self.action_offsets

    def sequence(self, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """frames [B, T, F] and actions [B, T-1, H] -> ids [B, T*F + (T-1)*H] (the layout in the module doc)."""
        self._check_clip(frames, actions)
        b, t, _ = frames.shape
        steps = torch.cat((frames.long(), F.pad(self.action_token_ids(actions), (0, 0, 0, 1))), dim=2)
        return steps.reshape(b, t * self.frame_stride)[:, :-self.num_action_heads]

    def check_frames(self, frames: torch.Tensor, name: str = "frames") -> None:
        """frames must be integer [B, T, F] codes in [0, codebook_size) with 1 <= T <= max_frames."""
        cfg = self.config
        _check_int_tensor(name, frames)
        if frames.shape[2] != cfg.tokens_per_frame:
            raise ValueError(f"{name} must have tokens_per_frame={cfg.tokens_per_frame} codes per frame, "
                             f"got shape {tuple(frames.shape)}")
        if not 1 <= frames.shape[1] <= cfg.max_frames:
            raise ValueError(f"{name} must hold 1..max_frames={cfg.max_frames} frames, got {frames.shape[1]}")
        if checking_values() and bool(self._bad_codes(frames).any()):
            raise ValueError(f"{name} must hold codes in [0, codebook_size={cfg.codebook_size})")

    def check_actions(self, actions: torch.Tensor, name: str = "actions") -> None:
        """actions must be integer [B, n, H] class indices, each in [0, its head's size)."""
        _check_int_tensor(name, actions)
        if actions.shape[2] != self.num_action_heads:
            raise ValueError(f"{name} must have H={self.num_action_heads} action heads in its last dim, "
                             f"got shape {tuple(actions.shape)}")
        if checking_values() and bool(self._bad_actions(actions).any()):
            raise ValueError(f"{name} must hold class indices in [0, head size), head sizes {list(self.head_sizes)}")

    # Value checks read tensors back to the host (a device sync on CUDA): inside
    # ``rlir.kernels.trusted_inputs()`` they are skipped; ``check_prompt`` does them all with one read.

    def _bad_codes(self, frames: torch.Tensor) -> torch.Tensor:
        return (frames < 0) | (frames >= self.config.codebook_size)

    def _bad_actions(self, actions: torch.Tensor) -> torch.Tensor:
        # head sizes from the action_offsets buffer, so no host list is copied to the device
        sizes = F.pad(self.action_offsets[1:], (0, 1), value=self.vocab_size) - self.action_offsets
        return (actions < 0) | (actions >= sizes.to(actions.device))

    def check_prompt(self, frames: torch.Tensor, actions: torch.Tensor, context_actions=None) -> None:
        """check_frames(frames) and check_actions of ``actions`` and ``context_actions`` (when given) with one
        host read for all of their values (none inside ``trusted_inputs()``): what a rollout validates once."""
        with trusted_inputs():  # types and shapes only: the values below, with one read
            self.check_frames(frames, "context_tokens")
            self.check_actions(actions)
            if context_actions is not None:
                self.check_actions(context_actions, "context_actions")
        if not checking_values():
            return
        flags = [self._bad_codes(frames).any(), self._bad_actions(actions).any()]
        if context_actions is not None:
            flags.append(self._bad_actions(context_actions).any())
        bad = torch.stack(flags).tolist()
        if bad[0]:
            raise ValueError(f"context_tokens must hold codes in [0, codebook_size={self.config.codebook_size})")
        for flag, name in zip(bad[1:], ("actions", "context_actions")):
            if flag:
                raise ValueError(f"{name} must hold class indices in [0, head size), head sizes "
                                 f"{list(self.head_sizes)}")

    def _check_clip(self, frames: torch.Tensor, actions: torch.Tensor) -> None:
        self.check_frames(frames)
        self.check_actions(actions)
        b, t, _ = frames.shape
        if tuple(actions.shape[:2]) != (b, t - 1):
            raise ValueError(f"actions must have shape [B, T-1, H] = {(b, t - 1, self.num_action_heads)}, "
                             f"got {tuple(actions.shape)}")

    def _predicting_positions(self, t: int, first_frame: int, device) -> torch.Tensor:
        """Sequence positions whose outputs predict frames first_frame..t-1: [t - first_frame, F]."""
        frames = torch.arange(first_frame, t, device=device)[:, None]
        return frames * self.frame_stride + torch.arange(self.config.tokens_per_frame, device=device) - 1

    # ---- forward passes -----------------------------------------------------------------------------

    def frame_actions(self, ids: torch.Tensor, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Action ids [B, s, H] that led into the frame of each code token at ``positions`` (default: all of
        ids, a sequence from position 0); -1 for frame 0's codes and for the action tokens themselves."""
        length = ids.shape[1]
        if positions is None:
            positions = torch.arange(length, device=ids.device)
        f, h, stride = self.config.tokens_per_frame, self.num_action_heads, self.frame_stride
        frame, offset = positions // stride, positions % stride
        is_conditioned = (offset < f) & (frame >= 1)
        source = (frame * stride - h).clamp(min=0)[:, None] + torch.arange(h, device=ids.device)  # [s, H]
        actions = ids[:, source.clamp(max=length - 1)]  # [B, s, H]
        return torch.where(is_conditioned[None, :, None], actions, -1)

    def _conditioning(self, history: torch.Tensor, positions: torch.Tensor) -> Optional[torch.Tensor]:
        """The optional inputs (module docstring) [B, s, d] added at ``positions`` [s] of the sequence
        ``history`` [B, > max(positions)] (ids from position 0); None when the model has none."""
        x = None
        if self.frame_action_embeddings is not None:
            frame_actions = self.frame_actions(history, positions)
            valid = frame_actions >= 0
            index = torch.where(valid, frame_actions - self.config.codebook_size, 0)
            x = (self.frame_action_embeddings(index) * valid[..., None]).sum(2)
        if self.previous_frame_input:
            f, stride, cols = self.config.tokens_per_frame, self.frame_stride, self.config.frame_grid[1]
            frame, offset = positions // stride, positions % stride
            inside = offset < f - 1  # a code that predicts the next code of its own frame
            predicts = inside | (offset == stride - 1)  # ... or the last action token, which predicts code 0
            target_frame = torch.where(inside, frame, frame + 1)
            target = torch.where(inside, offset + 1, 0)
            neighbours = self.neighbour_index[target]  # [s, 5]
            readable = (predicts & (target_frame >= 1))[:, None] & (neighbours >= 0)
            source = ((target_frame - 1)[:, None] * stride + neighbours).clamp(min=0)
            codes = torch.where(readable, history[:, source], self.config.codebook_size)  # [B, s, 5]
            previous = self.previous_frame_proj(self.previous_frame_embeddings(codes).flatten(2))
            where = (self.row_embeddings(target // cols) + self.col_embeddings(target % cols)) * predicts[:, None]
            x = previous + where if x is None else x + previous + where
        return x

    def forward_tokens(self, ids: torch.Tensor, cache: Optional[KVCache] = None,
                       history: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Final-normed hidden states [B, s, d] of ids [B, s] at positions cache.length.. (0 without a cache).

        With a cache the new keys/values are written into it and its length advances by s. ``history``
        [B, >= cache.length + s] is the whole sequence from position 0 (ids included), which the optional
        inputs read; it may be left out for a sequence from position 0 or for a model without them.
        """
        start = cache.length if cache is not None else 0
        s = ids.shape[1]
        if start + s > self.max_len:
            raise ValueError(f"sequence of {start + s} tokens exceeds max_frames={self.config.max_frames} "
                             f"({self.max_len} tokens)")
        cos, sin = self._rope_tables(start, s, ids.device)
        x = self.tok_embeddings(ids)
        if self.frame_action_embeddings is not None or self.previous_frame_input:
            if history is None:
                if start != 0:
                    raise ValueError("history (the sequence from position 0) is required to continue a sequence "
                                     "from a KV cache with frame_action_embedding or previous_frame_input")
                history = ids
            x = x + self._conditioning(history, torch.arange(start, start + s, device=ids.device))
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, i, cache, self.attn_backend)
        if cache is not None:
            cache.advance(s)
        return self.norm(x)

    def decode_step(self, ids: torch.Tensor, cache_k: Sequence[torch.Tensor], cache_v: Sequence[torch.Tensor],
                    history: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The static-shape decode step of the compiled rollout (``generate(..., compile=True)``): logits
        [N, codebook_size] of the last of ids [N, s] fed at sequence ``positions`` [s] (a device tensor).

        cache_k, cache_v: per layer [N, Hkv, L, D] (separate tensors, see ``StaticKVCache``; filled before
        ``positions``); the new keys/values are written at ``positions`` and attention runs over all L keys
        with the ones after each query masked. history [N, L]: the sequence, ids included (read by the optional per-position inputs).
        Nothing depends on the position at the Python level, so one graph (one CUDA graph) serves every step
        of a given s. Equals ``output(forward_tokens(ids, cache, history)[:, -1])`` up to float rounding.
        """
        cos_all, sin_all = self._rope[ids.device]  # filled by the prefill's forward_tokens
        cos, sin = cos_all[positions], sin_all[positions]
        x = self.tok_embeddings(ids)
        if self.frame_action_embeddings is not None or self.previous_frame_input:
            x = x + self._conditioning(history, positions)
        cache = StaticKVCache(cache_k, cache_v, positions)
        mask = torch.arange(cache_k[0].shape[2], device=ids.device) <= positions[:, None]  # [s, L]
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, i, cache, self.attn_backend, mask=mask)
        return self.output(self.norm(x[:, -1]))

    def hidden_states(self, frames: torch.Tensor, actions: torch.Tensor, first_frame: int = 1) -> torch.Tensor:
        """Hidden states [B, T - first_frame, F, d] that predict every code of frames first_frame..T-1."""
        ids = self.sequence(frames, actions)
        t = frames.shape[1]
        if isinstance(first_frame, bool) or not isinstance(first_frame, int) or not 1 <= first_frame < t:
            raise ValueError(f"first_frame must be an int in [1, T={t}), got {first_frame!r}")
        positions = self._predicting_positions(t, first_frame, ids.device)
        # The last code of the last frame is never an input that predicts anything: drop it.
        hidden = self.forward_tokens(ids[:, :-1])
        return hidden[:, positions]

    def forward(self, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [B, T-1, F, codebook_size] for every code of frames 1..T-1."""
        return self.output(self.hidden_states(frames, actions))

    def token_logprobs(self, frames: torch.Tensor, actions: torch.Tensor, temperature: float = 1.0,
                       n_context: int = 1, chunk_size: Optional[int] = None) -> torch.Tensor:
        """fp32 log-probs [B, T - n_context, F] of the codes of frames n_context..T-1 under softmax(logits / temperature).

        Computed from the hidden states and the output weight by ``rlir.kernels.fused_linear_logprobs``
        (``chunk_size`` rows at a time), so the full [B, T, F, codebook] logits never exist, in the forward
        or the backward. Differentiable; equals the log-probs ``generate`` records.
        """
        hidden = self.hidden_states(frames, actions, first_frame=n_context)
        b, n, f, d = hidden.shape
        targets = frames[:, n_context:].reshape(b * n * f)
        logp = fused_linear_logprobs(hidden.reshape(b * n * f, d), self.output.weight, targets, temperature,
                                     chunk_size)
        return logp.view(b, n, f)

    def loss(self, frames: torch.Tensor, actions: torch.Tensor, chunk_size: Optional[int] = None) -> torch.Tensor:
        """Teacher-forced next-token cross-entropy (nats per code) of frames 1..T-1: -mean token_logprobs."""
        return -self.token_logprobs(frames, actions, chunk_size=chunk_size).mean()

    def new_cache(self, batch: int, max_len: Optional[int] = None) -> KVCache:
        cfg = self.config
        return KVCache(cfg.n_layers, batch, cfg.n_kv_heads, max_len or self.max_len, cfg.d_model // cfg.n_heads,
                       dtype=self.dtype, device=self.device)

    def generate(self, context_tokens: torch.Tensor, actions: torch.Tensor, **kwargs):
        """See ``rlir.models.sampling.generate``."""
        return _generate(self, context_tokens, actions, **kwargs)
