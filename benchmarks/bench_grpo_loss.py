"""grpo_loss (from log-probs) and grpo_loss_from_logits (fused with token_logprobs).
Providers: the PyTorch reference, torch.compile of it, an unfused log_softmax.gather + reference loss,
and on CUDA the rlir Triton kernels. Run: python benchmarks/bench_grpo_loss.py [--out DIR]"""
from __future__ import annotations

import torch

from harness import Case, compiled, device, main, provider
from rlir.kernels import grpo_loss, grpo_loss_from_logits, grpo_loss_reference, token_logprobs_reference


def loss_inputs(n, t, dev, g):
    old = -torch.rand(n, t, device=dev, generator=g) * 3
    ref = old + 0.05 * torch.randn(n, t, device=dev, generator=g)
    adv = torch.randn(n, device=dev, generator=g)
    mask = torch.rand(n, t, device=dev, generator=g) < 0.9
    return old, adv, mask, ref


def reference_from_logits(logits, ids, old, adv, mask, ref):
    return grpo_loss_reference(token_logprobs_reference(logits, ids), old, adv, mask, ref, beta=0.04)


def unfused_from_logits(logits, ids, old, adv, mask, ref):
    logp = torch.log_softmax(logits.float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return grpo_loss_reference(logp, old, adv, mask, ref, beta=0.04)


def fused_from_logits(logits, ids, old, adv, mask, ref):
    return grpo_loss_from_logits(logits, ids, old, adv, mask, ref, beta=0.04)


def loss_cases(dev):
    out = []
    for n, t in [(64, 1040), (512, 1024)]:
        def make_inputs(requires_grad, n=n, t=t):
            g = torch.Generator(device=dev).manual_seed(0)
            old, adv, mask, ref = loss_inputs(n, t, dev, g)
            logp = (old + 0.1 * torch.randn(n, t, device=dev, generator=g)).requires_grad_(requires_grad)
            return logp, old, adv, mask, ref

        def ref_fn(logp, old, adv, mask, ref):
            return grpo_loss_reference(logp, old, adv, mask, ref, beta=0.04)

        def ours(logp, old, adv, mask, ref):
            return grpo_loss(logp, old, adv, mask, ref, beta=0.04)

        fns = {"torch": ref_fn, "torch.compile": compiled(ref_fn)}
        if dev.type == "cuda":
            fns["rlir-triton"] = ours
        for mode in ("forward", "full"):
            # logp, old, ref, mask read (+ grad written in full)
            traffic = n * t * (4 + 4 + 4 + 1 + (4 if mode == "full" else 0))
            out.append(Case("grpo_loss", {"N": n, "T": t}, "fp32", mode,
                            {k: provider(f, make_inputs, mode) for k, f in fns.items()}, bytes_moved=traffic))
    return out


def from_logits_cases(dev):
    out = []
    shapes = [(8, 1024, 32768), (8, 1040, 600)] if dev.type == "cuda" else [(4, 256, 32768), (8, 272, 600)]
    for n, t, vocab in shapes:
        for dtype_name, dtype in {"fp32": torch.float32, "bf16": torch.bfloat16}.items():
            def make_inputs(requires_grad, n=n, t=t, vocab=vocab, dtype=dtype):
                g = torch.Generator(device=dev).manual_seed(0)
                logits = torch.randn(n, t, vocab, device=dev, generator=g).to(dtype).requires_grad_(requires_grad)
                ids = torch.randint(0, vocab, (n, t), device=dev, generator=g)
                old = token_logprobs_reference(logits.detach(), ids) + 0.05 * torch.randn(n, t, device=dev, generator=g)
                _, adv, mask, ref = loss_inputs(n, t, dev, g)
                return logits, ids, old, adv, mask, ref

            fns = {"torch": reference_from_logits, "torch.compile": compiled(reference_from_logits),
                   "log_softmax.gather": unfused_from_logits}
            if dev.type == "cuda":
                fns["rlir-triton"] = fused_from_logits
            size = n * t * vocab * torch.tensor([], dtype=dtype).element_size()
            for mode in ("forward", "full"):
                traffic = size * (1 if mode == "forward" else 3)
                out.append(Case("grpo_loss_from_logits", {"N": n, "T": t, "V": vocab}, dtype_name, mode,
                                {k: provider(f, make_inputs, mode) for k, f in fns.items()}, bytes_moved=traffic))
    return out


def cases():
    dev = device()
    return loss_cases(dev) + from_logits_cases(dev)


if __name__ == "__main__":
    main("grpo_loss", cases, __doc__)
