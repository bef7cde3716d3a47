"""NFD-style diffusion world model: a frame-causal DiT over frame latents, trained with flow matching.

Frames and noise: flow matching with x_sigma = (1 - sigma) x0 + sigma * eps, sigma in [0, 1]; the model predicts
the velocity v = eps - x0 of each frame. A clip of T frames is T grids [C, S, S], cut into patch_size x
patch_size patches, so every frame is ``tokens_per_frame`` tokens. Tokens attend bidirectionally within their
frame and to every token of earlier frames (a block mask). Positions: a learned embedding per patch, and RoPE
over the frame index (all tokens of one frame share a rotation, so it encodes time only). Each frame is
conditioned through adaLN-Zero on its own noise level sigma and on the action that led to it (action k leads
from frame k to frame k + 1; frame 0 of a clip gets a learned "no action" class per head).

Training layout (teacher forcing with a clean history). Every frame of a clip gets its own sigma, but a frame
must see the *clean* earlier frames, as it will at generation, where each finished frame is clean. Training
with independently noised history (diffusion forcing) would teach the model a history it never sees when
generating. So the sequence is [clean frames 0..T-2 ; noisy frames n_context..T-1]: clean frame i attends to
clean frames <= i, noisy frame k to clean frames < k and to itself, and the loss is the velocity MSE of the
noisy frames. The clean copy costs up to 2x the tokens; in exchange one pass trains every frame of the clip
against exactly the keys/values the generation cache holds. ``forward`` takes any number of noisy slots per
frame index, which is also how the SDE log-probs of many recorded denoising steps are rescored in one pass.

Generation (``rlir.models.flow_sampling``) keeps a per-frame KV cache: the context frames are run once at
sigma = 0, each generated frame is denoised in a few steps attending to the cache and to itself, and when it
is done it is run once more at sigma = 0 to append its keys/values.

Frame representation (``frame_space``): "pixels" (uint8 frames scaled to [-1, 1], cut into p x p patches) or
"tokenizer_latents" (the VQ tokenizer's pre-quantisation encoder output, normalised by ``latent_shift`` /
``latent_scale`` and decoded by the tokenizer's decoder). A small DiT learns faster on latents than on pixels
(docs/experiments.md has the comparison). ``previous_frame_input`` concatenates to every frame's patches the
same patches of the clean frame before it, so copying the last frame is a local operation rather than
something attention must learn; ``previous_frame_neighbourhood`` adds the previous frame shifted one cell in
each direction, so with tile-aligned latents (Crafter at 72x72, patch_size 1) a move is a local choice too.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from rlir.kernels import checking_values

from .ar_world_model import NEIGHBOURHOOD, apply_rope, check_transformer_config
from .attention import BACKENDS, attention
from .arguments import check_int, frame_size_pair
from .kv_cache import KVCache, StaticKVCache
from .masks import FrameCausal

FRAME_SPACES = ("pixels", "tokenizer_latents")
SIGMA_EMBEDDING_DIM = 256


def _check_number(name: str, value, minimum: float, inclusive: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (value == minimum and not inclusive):
        raise ValueError(f"{name} must be a finite number {'>=' if inclusive else '>'} {minimum}, got {value!r}")


def sigma_embedding(sigma: torch.Tensor, dim: int = SIGMA_EMBEDDING_DIM) -> torch.Tensor:
    """Sinusoidal features [..., dim] of sigma in [0, 1] (scaled by 1000, the scheduler's timestep scale)."""
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, dtype=torch.float32, device=sigma.device) / (dim // 2))
    angles = 1000.0 * sigma.float()[..., None] * freqs
    return torch.cat((angles.cos(), angles.sin()), dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def frame_causal_mask(clean_frames: int, noisy_index: torch.Tensor) -> torch.Tensor:
    """Frame-level bool mask [Tc + M, Tc + M] of the sequence [clean frames 0..Tc-1 ; M noisy frames]:
    clean i sees clean j <= i; the noisy slot of frame k sees clean j < k and itself only. The model uses
    ``FrameCausal.teacher_forced`` (the same rule as index arithmetic); this dense form is its test oracle
    and the dense-mask baseline of benchmarks/bench_attention.py."""
    clean_index = torch.arange(clean_frames, device=noisy_index.device)
    m = len(noisy_index)
    clean_rows = torch.cat((clean_index[None, :] <= clean_index[:, None],
                            torch.zeros(clean_frames, m, dtype=torch.bool, device=noisy_index.device)), dim=1)
    noisy_rows = torch.cat((clean_index[None, :] < noisy_index[:, None],
                            torch.eye(m, dtype=torch.bool, device=noisy_index.device)), dim=1)
    return torch.cat((clean_rows, noisy_rows), dim=0)


class DiTBlock(nn.Module):
    """Pre-norm DiT block with adaLN-Zero: attention (QK-RMSNorm, frame RoPE) and a GELU MLP, each scaled,
    shifted and gated per frame by its conditioning vector."""

    def __init__(self, d_model: int, n_heads: int, ffn_hidden: int, norm_eps: float):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.norm1 = nn.LayerNorm(d_model, elementwise_affine=False, eps=norm_eps)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=norm_eps)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=norm_eps)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model, elementwise_affine=False, eps=norm_eps)
        self.mlp = nn.Sequential(nn.Linear(d_model, ffn_hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(ffn_hidden, d_model))
        self.modulation = nn.Linear(d_model, 6 * d_model)

    def forward(self, x, cond, cos, sin, mask, layer: int, cache: Optional[KVCache], backend: str):
        """x [B, F, P, d], cond [B, F, d] (already through SiLU), cos/sin [F * P, head_dim]."""
        b, f, p, d = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond)[:, :, None].chunk(6, dim=-1)
        h = modulate(self.norm1(x), shift1, scale1).reshape(b, f * p, d)
        q, k, v = self.qkv(h).view(b, f * p, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q = apply_rope(self.q_norm(q), cos, sin)
        k = apply_rope(self.k_norm(k), cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        y = attention(q, k, v, mask=mask, backend=backend).transpose(1, 2).reshape(b, f, p, d)
        x = x + gate1 * self.proj(y)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiTWorldModel(ModelMixin, ConfigMixin):
    """Action-conditioned flow-matching video model; ``save_pretrained``/``from_pretrained`` write config.json +
    safetensors.

    Config: in_channels and frame_size (a frame is [in_channels, rows, cols] in ``frame_space``; frame_size is
    [rows, cols], or one int for square frames),
    patch_size, action_head_sizes (classes per action head, e.g. [17]), n_layers, d_model, n_heads, ffn_hidden
    (MLP width; default 4 d_model), max_frames (longest clip: RoPE and KV-cache length), rope_theta, norm_eps,
    attn_backend (see ``rlir.models.attention``; the training mask needs one that takes a mask: sdpa, flex,
    math, xformers), frame_space ("pixels" or "tokenizer_latents"), latent_shift / latent_scale (model input =
    (latent - shift) * scale; pixels are mapped to [-1, 1] first), previous_frame_input (each frame's patches
    enter together with the same patches of the clean frame before it; zeros for frame 0),
    previous_frame_neighbourhood (with previous_frame_input: the previous frame enters also shifted by one
    cell up, down, left and right, so a one-tile scroll is a choice among inputs the patch already has;
    with tile-aligned latents, Crafter at 72x72 and patch_size 1, that is exactly a move).
    """

    @register_to_config
    def __init__(self, in_channels: int = 32, frame_size: int | list[int] = 8, patch_size: int = 1,
                 action_head_sizes: Sequence[int] = (17,), n_layers: int = 4, d_model: int = 192, n_heads: int = 6,
                 ffn_hidden: Optional[int] = None, max_frames: int = 16, rope_theta: float = 10000.0,
                 norm_eps: float = 1e-6, attn_backend: str = "sdpa", frame_space: str = "tokenizer_latents",
                 latent_shift: float = 0.0, latent_scale: float = 1.0, previous_frame_input: bool = True,
                 previous_frame_neighbourhood: bool = False):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("patch_size", patch_size)):
            check_int(name, value)
        self.frame_shape = frame_size_pair("frame_size", frame_size)  # (rows, cols) of a model-space frame
        check_transformer_config(n_layers, d_model, n_heads, max_frames, action_head_sizes)
        if any(side % patch_size for side in self.frame_shape):
            raise ValueError(f"frame_size {list(self.frame_shape)} must be a multiple of patch_size ({patch_size})")
        if ffn_hidden is None:
            ffn_hidden = 4 * d_model
        check_int("ffn_hidden", ffn_hidden)
        _check_number("rope_theta", rope_theta, 1.0)
        _check_number("norm_eps", norm_eps, 0.0)
        _check_number("latent_scale", latent_scale, 0.0)
        _check_number("latent_shift", latent_shift, -math.inf)
        if attn_backend not in BACKENDS:
            raise ValueError(f"attn_backend must be one of {list(BACKENDS)}, got {attn_backend!r}")
        if frame_space not in FRAME_SPACES:
            raise ValueError(f"frame_space must be one of {list(FRAME_SPACES)}, got {frame_space!r}")
        for name, value in (("previous_frame_input", previous_frame_input),
                            ("previous_frame_neighbourhood", previous_frame_neighbourhood)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a bool, got {value!r}")
        if previous_frame_neighbourhood and not previous_frame_input:
            raise ValueError("previous_frame_neighbourhood needs previous_frame_input")
        if frame_space == "pixels" and in_channels != 3:
            raise ValueError(f"in_channels must be 3 with frame_space 'pixels', got {in_channels}")

        self.head_sizes = tuple(action_head_sizes)
        self.num_action_heads = len(self.head_sizes)
        self.grid = (self.frame_shape[0] // patch_size, self.frame_shape[1] // patch_size)  # patches (rows, cols)
        self.tokens_per_frame = self.grid[0] * self.grid[1]
        self.patch_dim = in_channels * patch_size**2
        self.attn_backend = attn_backend

        copies = 1 + (len(NEIGHBOURHOOD) if previous_frame_neighbourhood else int(previous_frame_input))
        self.patch_in = nn.Linear(copies * self.patch_dim, d_model)
        self.patch_position = nn.Parameter(torch.zeros(self.tokens_per_frame, d_model))
        self.sigma_mlp = nn.Sequential(nn.Linear(SIGMA_EMBEDDING_DIM, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        # One extra class per head: "no action", for the first frame of a clip.
        self.action_embeddings = nn.ModuleList(nn.Embedding(size + 1, d_model) for size in self.head_sizes)
        self.blocks = nn.ModuleList(DiTBlock(d_model, n_heads, ffn_hidden, norm_eps) for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(d_model, elementwise_affine=False, eps=norm_eps)
        self.final_modulation = nn.Linear(d_model, 2 * d_model)
        self.patch_out = nn.Linear(d_model, self.patch_dim)
        self._rope: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._device_index: dict[tuple, torch.Tensor] = {}
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        nn.init.normal_(self.patch_position, std=0.02)
        for linear in self.sigma_mlp[0], self.sigma_mlp[2]:
            nn.init.normal_(linear.weight, std=0.02)
        # adaLN-Zero: every block starts as the identity and the output as zero velocity.
        for module in (*[block.modulation for block in self.blocks], self.final_modulation, self.patch_out):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)

    # ---- frames <-> model space ---------------------------------------------------------------------

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor, tokenizer=None) -> torch.Tensor:
        """uint8 frames [..., 3, H, W] -> model-space frames [..., in_channels, rows, cols] fp32."""
        cfg = self.config
        if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8 or frames.ndim < 3:
            raise ValueError(f"frames must be a uint8 tensor [..., 3, H, W], got "
                             f"{getattr(frames, 'dtype', type(frames).__name__)} {tuple(getattr(frames, 'shape', ()))}")
        leading = frames.shape[:-3]
        if cfg.frame_space == "pixels":
            x = frames.to(self.device).float() / 127.5 - 1
        else:
            x = latents_from_tokenizer(_need_tokenizer(tokenizer), frames.reshape(-1, *frames.shape[-3:]))
            x = (x.to(self.device) - cfg.latent_shift) * cfg.latent_scale
        expected = (cfg.in_channels, *self.frame_shape)
        if tuple(x.shape[-3:]) != expected:
            raise ValueError(f"frames encode to {tuple(x.shape[-3:])}, the model takes {expected}")
        return x.reshape(*leading, *expected)

    @torch.no_grad()
    def decode_frames(self, x: torch.Tensor, tokenizer=None, batch: int = 256) -> torch.Tensor:
        """Model-space frames [..., in_channels, rows, cols] -> uint8 frames [..., 3, H, W]."""
        cfg = self.config
        leading, flat = x.shape[:-3], x.reshape(-1, *x.shape[-3:]).float()
        if cfg.frame_space == "pixels":
            frames = ((flat + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        else:
            tokenizer = _need_tokenizer(tokenizer)
            parts = [frames_from_latents(tokenizer, flat[i:i + batch] / cfg.latent_scale + cfg.latent_shift)
                     for i in range(0, len(flat), batch)]
            frames = torch.cat(parts) if parts else torch.empty(0, 3, 64, 64, dtype=torch.uint8)
        return frames.reshape(*leading, *frames.shape[1:])

    # ---- patches and conditioning -------------------------------------------------------------------

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[..., C, S, S] -> [..., P, C * p * p] (patches row-major over the grid)."""
        p, (gr, gc), c = self.config.patch_size, self.grid, x.shape[-3]
        lead = x.shape[:-3]
        x = x.reshape(-1, c, gr, p, gc, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(*lead, gr * gc, c * p * p)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        p, (gr, gc), c = self.config.patch_size, self.grid, self.config.in_channels
        lead = tokens.shape[:-2]
        x = tokens.reshape(-1, gr, gc, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(*lead, c, gr * p, gc * p)

    def frame_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Actions between frames [B, T-1, H] -> the action that led to each frame [B, T, H] (frame 0: "no action")."""
        null = self._on_device(self.head_sizes, actions.device)
        return torch.cat((null.expand(actions.shape[0], 1, -1), actions.long()), dim=1)

    def conditioning(self, frame_actions: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Per-frame conditioning [B, F, d] from frame_actions [B, F, H] and sigma [B, F], through SiLU."""
        emb = self.sigma_mlp(sigma_embedding(sigma).to(self.patch_in.weight.dtype))
        for head, table in enumerate(self.action_embeddings):
            emb = emb + table(frame_actions[..., head])
        return F.silu(emb)

    def _on_device(self, values, device) -> torch.Tensor:
        """Host ints as an int64 device tensor, made once per (values, device): a blocking host-to-device copy
        synchronises a CUDA stream, which a denoising step or a micro-batch should not pay each time."""
        key = (tuple(values), torch.device(device))
        index = self._device_index.get(key)
        if index is None:
            if len(self._device_index) >= 256:
                self._device_index.clear()
            index = self._device_index[key] = torch.tensor(key[0], dtype=torch.long, device=device)
        return index

    def _rope_tables(self, positions: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [F * P, head_dim] for host frame positions [F] (each repeated over the frame's P tokens)."""
        cos, sin = self._rope_full(device)
        p = self.tokens_per_frame
        index = self._on_device([position for position in positions for _ in range(p)], device)
        return cos[index], sin[index]

    def _rope_full(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [max_frames, head_dim], made once per device."""
        device = torch.device(device)
        if device not in self._rope:  # fp32 attributes, not buffers: casting the model must not round the angles
            hd = self.config.d_model // self.config.n_heads
            inv_freq = self.config.rope_theta ** (-torch.arange(0, hd, 2, dtype=torch.float64, device=device) / hd)
            angles = torch.arange(self.config.max_frames, dtype=torch.float64, device=device)[:, None] * inv_freq
            angles = torch.cat((angles, angles), dim=-1)
            self._rope[device] = (angles.cos().float(), angles.sin().float())
        return self._rope[device]

    # ---- transformer ---------------------------------------------------------------------------------

    def _run(self, x: torch.Tensor, previous: torch.Tensor, cond: torch.Tensor, positions: list[int],
             mask: Optional[FrameCausal], cache: Optional[KVCache] = None,
             output: bool = True, rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> Optional[torch.Tensor]:
        """Frames x [B, F, C, S, S], the clean frame before each (previous, same shape), with conditioning
        [B, F, d] at host frame positions [F] -> velocity [B, F, C, S, S].

        mask: which frames see which (``rlir.models.masks.FrameCausal``, index arithmetic; None: every key).
        With a cache the frames' keys/values are written at its current length (it is not advanced) and
        attend to the cached ones before them. Positions are host ints, so checking them never syncs.
        rope: (cos, sin) [F * P, head_dim] given instead of positions (``static_velocity``).
        """
        if rope is None and max(positions) >= self.config.max_frames:
            raise ValueError(f"frame index {max(positions)} exceeds max_frames={self.config.max_frames}")
        if self.config.previous_frame_input:
            previous = previous.to(x.dtype)
            if self.config.previous_frame_neighbourhood:
                previous = shifted_neighbourhood(previous)
            x = torch.cat((x, previous), dim=2)  # channels: a patch sees its own past directly
        h = self.patch_in(self.patchify(x).to(self.patch_in.weight.dtype)) + self.patch_position
        cos, sin = self._rope_tables(positions, x.device) if rope is None else rope
        for i, block in enumerate(self.blocks):
            h = block(h, cond, cos, sin, mask, i, cache, self.attn_backend)
        if not output:
            return None
        shift, scale = self.final_modulation(cond)[:, :, None].chunk(2, dim=-1)
        return self.unpatchify(self.patch_out(modulate(self.final_norm(h), shift, scale)))

    def forward(self, noisy: torch.Tensor, sigma: torch.Tensor, actions: torch.Tensor, clean: torch.Tensor,
                frame_index: torch.Tensor) -> torch.Tensor:
        """Teacher-forced velocity [B, M, C, S, S] of M noisy frames with a clean history (the module doc's layout).

        noisy [B, M, C, S, S] at noise levels sigma [B, M]; clean [B, Tc, C, S, S] = frames 0..Tc-1;
        frame_index [M] host ints (a list or CPU tensor: a device tensor would be read back) in [1, Tc]: slot m
        is frame frame_index[m], which attends to clean frames < frame_index[m] and to itself; actions
        [B, >= max(Tc - 1, max frame_index), H] lead from frame k to k+1.
        """
        b, m = noisy.shape[:2]
        tc = clean.shape[1]
        host_index = frame_index.tolist() if isinstance(frame_index, torch.Tensor) else list(frame_index)
        if tuple(sigma.shape) != (b, m) or len(host_index) != m:
            raise ValueError(f"sigma must be [B, M] = {(b, m)} and frame_index [M], got {tuple(sigma.shape)} and "
                             f"{len(host_index)} indices")
        if m and (min(host_index) < 1 or max(host_index) > tc):
            raise ValueError(f"frame_index must be in [1, Tc={tc}] (a noisy frame needs a clean frame before it)")
        self.check_actions(actions)
        frame_index = self._on_device(host_index, noisy.device)
        needed = max(tc - 1, max(host_index) if m else 0)
        if actions.shape[1] < needed or actions.shape[0] != b:
            raise ValueError(f"actions must have shape [B={b}, >= {needed}, H], got {tuple(actions.shape)}")
        per_frame = self.frame_actions(actions)
        cond = self.conditioning(torch.cat((per_frame[:, :tc], per_frame[:, frame_index]), dim=1),
                                 torch.cat((sigma.new_zeros(b, tc), sigma), dim=1))
        x = torch.cat((clean, noisy), dim=1)
        before_clean = torch.cat((torch.zeros_like(clean[:, :1]), clean[:, :-1]), dim=1)
        previous = torch.cat((before_clean, clean[:, frame_index - 1]), dim=1)
        mask = FrameCausal.teacher_forced(self.tokens_per_frame, tc, host_index)
        out = self._run(x, previous, cond, list(range(tc)) + host_index, mask)
        return out[:, tc:]

    def loss(self, frames: torch.Tensor, actions: torch.Tensor, n_context: int = 1,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Flow-matching loss of a clip: model-space frames [B, T, C, S, S], actions [B, T-1, H]. Frames
        n_context..T-1 each get their own sigma ~ logit-normal(0, 1) and noise; the loss is the MSE of the
        predicted against the true velocity eps - x0 over those frames (the context frames stay clean)."""
        b, t = frames.shape[:2]
        if isinstance(n_context, bool) or not isinstance(n_context, int) or not 1 <= n_context < t:
            raise ValueError(f"n_context must be an int in [1, T={t}), got {n_context!r}")
        x0 = frames[:, n_context:]
        sigma = torch.sigmoid(torch.randn(b, t - n_context, generator=generator, device=frames.device))
        noise = torch.randn(x0.shape, generator=generator, device=frames.device)
        s = sigma[:, :, None, None, None]
        noisy = (1 - s) * x0 + s * noise
        v = self(noisy, sigma, actions, clean=frames[:, :-1], frame_index=torch.arange(n_context, t))
        return F.mse_loss(v.float(), noise - x0)

    # ---- cached generation ---------------------------------------------------------------------------

    def new_cache(self, batch: int, frames: Optional[int] = None) -> KVCache:
        cfg = self.config
        return KVCache(cfg.n_layers, batch, cfg.n_heads, (frames or cfg.max_frames) * self.tokens_per_frame,
                       cfg.d_model // cfg.n_heads, dtype=self.dtype, device=self.device)

    def cache_frames(self, clean: torch.Tensor, frame_actions: torch.Tensor, cache: KVCache,
                     before: Optional[torch.Tensor] = None) -> None:
        """Append the keys/values of clean frames [B, F, C, S, S] (frame_actions [B, F, H]: the action that led to
        each) at sigma 0; they are frames cache.length / P .. of the video and attend frame-causally. before
        [B, C, S, S] is the clean frame preceding them (required unless they start the video)."""
        f = clean.shape[1]
        start = cache.length // self.tokens_per_frame
        if (before is None) != (start == 0):
            raise ValueError("before (the frame preceding clean) must be given exactly when the cache is not empty")
        first = torch.zeros_like(clean[:, 0]) if before is None else before
        previous = torch.cat((first[:, None], clean[:, :-1]), dim=1)
        cond = self.conditioning(frame_actions, clean.new_zeros(clean.shape[0], f))
        mask = FrameCausal.clean(self.tokens_per_frame, start + f)  # the new frames are the last f of start + f
        self._run(clean, previous, cond, list(range(start, start + f)), mask, cache, output=False)
        cache.advance(f * self.tokens_per_frame)

    def cached_velocity(self, noisy: torch.Tensor, sigma: torch.Tensor, frame_action: torch.Tensor,
                        cache: KVCache, previous: torch.Tensor) -> torch.Tensor:
        """Velocity [B, C, S, S] of the next frame (index cache.length / P) noisy [B, C, S, S] at sigma [B],
        attending to every cached frame and to itself; previous [B, C, S, S] is the last cached (clean) frame.
        The cache is left as it was."""
        index = cache.length // self.tokens_per_frame
        cond = self.conditioning(frame_action[:, None], sigma[:, None])
        return self._run(noisy[:, None], previous[:, None], cond, [index], None, cache)[:, 0]

    def static_velocity(self, noisy: torch.Tensor, sigma: torch.Tensor, frame_action: torch.Tensor,
                        cache_k: Sequence[torch.Tensor], cache_v: Sequence[torch.Tensor], previous: torch.Tensor,
                        frame_index: torch.Tensor) -> torch.Tensor:
        """``cached_velocity`` as a static-shape step, what the compiled rollout runs (``flow_sampling.generate(
        ..., compile=True)``): the frame index is a 0-d device tensor, the frame's keys/values are written into
        the full per-layer cache buffers [B, H, L, D] (see ``StaticKVCache``) at its P positions, and attention runs over all L keys
        with those after the frame masked. Nothing depends on the index at the Python level, so one graph
        serves every frame and denoising step. Equals ``cached_velocity`` up to float rounding."""
        p = self.tokens_per_frame
        positions = frame_index * p + torch.arange(p, device=noisy.device)
        cos_all, sin_all = self._rope_full(noisy.device)
        index = frame_index.reshape(1)  # a 1-d index: gathering, not a data-dependent select
        rope = (cos_all[index].expand(p, -1), sin_all[index].expand(p, -1))
        mask = (torch.arange(cache_k[0].shape[2], device=noisy.device) < (frame_index + 1) * p)[None]  # [1, L]
        cond = self.conditioning(frame_action[:, None], sigma[:, None])
        return self._run(noisy[:, None], previous[:, None], cond, [], mask, StaticKVCache(cache_k, cache_v, positions),
                         rope=rope)[:, 0]

    def check_actions(self, actions: torch.Tensor, name: str = "actions") -> None:
        """actions must be integer [B, n, H] class indices, each in [0, its head's size)."""
        if not isinstance(actions, torch.Tensor) or actions.is_floating_point() or actions.ndim != 3 \
                or actions.shape[2] != self.num_action_heads:
            raise ValueError(f"{name} must be an integer tensor [B, n, H={self.num_action_heads}], got "
                             f"{getattr(actions, 'dtype', type(actions).__name__)} {tuple(getattr(actions, 'shape', ()))}")
        if checking_values() and bool(self._bad_actions(actions).any()):  # skipped inside trusted_inputs()
            raise ValueError(f"{name} must hold class indices in [0, head size), head sizes {list(self.head_sizes)}")

    def _bad_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions < 0) | (actions >= self._on_device(self.head_sizes, actions.device))

    def generate(self, context: torch.Tensor, actions: torch.Tensor, **kwargs):
        """See ``rlir.models.flow_sampling.generate``."""
        from .flow_sampling import generate

        return generate(self, context, actions, **kwargs)


def shifted_neighbourhood(x: torch.Tensor) -> torch.Tensor:
    """Frames [..., C, S, S] -> [..., 5C, S, S]: x itself, then x read one cell away in each NEIGHBOURHOOD
    direction (zeros past the border), so channel block k at (r, c) holds x at (r + dr_k, c + dc_k)."""
    s_r, s_c = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1))
    return torch.cat([padded[..., 1 + dr:1 + dr + s_r, 1 + dc:1 + dc + s_c] for dr, dc in NEIGHBOURHOOD], dim=-3)


# ---- the VQ tokenizer's continuous latent path (frame_space "tokenizer_latents") -----------------------

def _need_tokenizer(tokenizer):
    if tokenizer is None:
        raise ValueError("tokenizer is required: this model works in frame_space 'tokenizer_latents'")
    return tokenizer


@torch.no_grad()
def latents_from_tokenizer(tokenizer, frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames [N, 3, H, W] -> the tokenizer encoder's pre-quantisation latents [N, code_dim, rows, cols]."""
    x, _ = tokenizer._frames_to_input(frames)
    rows, cols = tokenizer.code_grid
    return tokenizer._encode_latents(x).float().reshape(-1, rows, cols, tokenizer.config.code_dim).permute(0, 3, 1, 2)


@torch.no_grad()
def frames_from_latents(tokenizer, latents: torch.Tensor) -> torch.Tensor:
    """Latents [N, code_dim, grid, grid] -> uint8 frames [N, 3, H, W] through the tokenizer's decoder (no codebook)."""
    flat = latents.permute(0, 2, 3, 1).reshape(-1, tokenizer.config.code_dim).to(tokenizer.device, tokenizer.dtype)
    return tokenizer.to_uint8(tokenizer._decode_latents(flat).clamp(0, 1))
