"""The DiT's frame-causal attention (forward): flex_attention with the mask as index arithmetic
(rlir.models.masks.FrameCausal, its BlockMask built once and cached) against sdpa with the dense boolean mask.

Layouts are the DiT's training sequence [clean frames 0..T-2 ; noisy slots of frames 1..T-1] (2T - 2 slots of P
tokens): the Crafter DiT (P=16, 8-frame clips, d=192, 6 heads) and a longer one (P=64, 16 frames). Providers:
  sdpa dense          F.scaled_dot_product_attention with the [S, S] bool mask (what the DiT passes today)
  sdpa spec           attention(mask=spec, backend="sdpa"): the dense mask built from the spec, cached
  flex dense-mask_mod attention(mask=dense, backend="flex"): a mask_mod indexing the dense mask, a BlockMask per call
  flex spec           attention(mask=spec, backend="flex"): eager flex_attention with the cached BlockMask
  flex spec compiled  torch.compile(flex_attention) with the cached BlockMask (the attention-gym way; fused)
and the one-off mask builds: the DiT's frame_causal_mask + repeat_interleave, spec.dense, the BlockMask.
Eager flex on CPU is unfused (it materialises the scores); compiled flex skips the masked-out blocks.
Run: python benchmarks/bench_attention.py [--out DIR] [--providers ...]"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from harness import Case, device, main
from rlir.models.attention import _frame_block_mask, attention
from rlir.models.dit_world_model import frame_causal_mask
from rlir.models.masks import FrameCausal

warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")

# (name, batch, heads, head_dim, tokens per frame, frames in the clip)
LAYOUTS = [("crafter_dit", 8, 6, 32, 16, 8), ("long", 1, 6, 32, 64, 16)]


def cases():
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    dev = device()
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    flex_compiled = torch.compile(flex_attention, dynamic=False)
    out = []
    for name, b, h, d, p, frames in LAYOUTS:
        noisy_index = torch.arange(1, frames)
        spec = FrameCausal.teacher_forced(p, frames - 1, noisy_index)
        s = spec.key_tokens
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v = (torch.randn(b, h, s, d, generator=g, device=dev, dtype=dtype) for _ in range(3))
        dense = spec.dense(s, s, dev)
        block_mask = _frame_block_mask(spec, s, s, str(dev))
        shape = dict(B=b, H=h, S=s, D=d, P=p)
        notes = dict(layout=name, block_sparsity_percent=round(float(block_mask.sparsity()), 1),
                     mask_density_percent=round(100 * dense.float().mean().item(), 1))

        def forward(fn):
            def build():
                def run():
                    with torch.no_grad():
                        return fn()
                return run
            return build

        out.append(Case("attention.frame_causal", shape, str(dtype)[6:], "forward", {
            "sdpa dense": forward(lambda q=q, k=k, v=v, m=dense: F.scaled_dot_product_attention(q, k, v, attn_mask=m)),
            "sdpa spec": forward(lambda q=q, k=k, v=v, m=spec: attention(q, k, v, mask=m, backend="sdpa")),
            "flex dense-mask_mod": forward(lambda q=q, k=k, v=v, m=dense: attention(q, k, v, mask=m, backend="flex")),
            "flex spec": forward(lambda q=q, k=k, v=v, m=spec: attention(q, k, v, mask=m, backend="flex")),
            "flex spec compiled": forward(lambda q=q, k=k, v=v, bm=block_mask: flex_compiled(q, k, v, block_mask=bm)),
        }, flops=4 * b * h * s * s * d, notes=notes))

        tc = frames - 1
        out.append(Case("mask.build", shape, "bool", "forward", {
            "frame_causal_mask+repeat": forward(
                lambda tc=tc, i=noisy_index.to(dev), p=p:
                frame_causal_mask(tc, i).repeat_interleave(p, 0).repeat_interleave(p, 1)),
            "spec.dense": forward(lambda spec=spec, s=s: spec.dense(s, s, dev)),
            "BlockMask (once per shape)": forward(
                lambda spec=spec, s=s: create_block_mask(spec.mask_mod(s, s, dev), None, None, s, s, device=dev)),
        }, notes=notes))
    return out


if __name__ == "__main__":
    main("attention", cases, __doc__)
