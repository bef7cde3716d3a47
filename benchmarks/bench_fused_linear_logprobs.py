"""fused_linear_logprobs: log-probs from hidden states without the [M, V] logits, forward and full
(forward + backward), against materialising the logits (eager and torch.compile), the bare matmul
(the roofline this op should approach) and, on CUDA, Liger-Kernel's fused linear cross-entropy with
reduction="none" (its per-token loss is minus the log-prob; Triton, so not on CPU).
Run: python benchmarks/bench_fused_linear_logprobs.py [--out DIR]"""
from __future__ import annotations

import torch

from harness import installed, unavailable
from harness import Case, compiled, device, main, provider
from rlir.kernels import fused_linear_logprobs, fused_linear_logprobs_reference

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def bare_matmul(hidden, weight, ids):
    return hidden @ weight.T


def liger_fused_linear_cross_entropy(hidden, weight, ids):
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    return -LigerFusedLinearCrossEntropyLoss(reduction="none")(weight, hidden, ids)


def liger_provider(make_inputs, mode, dev):
    if not installed("liger_kernel"):
        return unavailable("liger-kernel is not installed (pip install -e '.[bench]')")
    if dev.type != "cuda":
        return unavailable("Liger's fused linear cross-entropy is a Triton kernel: needs a CUDA device")
    return provider(liger_fused_linear_cross_entropy, make_inputs, mode)


def shapes():
    if torch.cuda.is_available():  # (M, H, V): the AR world model, then LLM GRPO shapes
        return [(16384, 256, 512), (8192, 1024, 32768), (8192, 4096, 152064)]
    return [(2048, 256, 512), (1024, 512, 32768)]


def cases():
    dev = device()
    out = []
    for rows, hidden_size, vocab in shapes():
        for dtype_name, dtype in DTYPES.items():
            if dev.type == "cpu" and dtype == torch.bfloat16:
                continue  # CPU bf16 matmuls are not representative of anything users run
            def make_inputs(requires_grad, rows=rows, hidden_size=hidden_size, vocab=vocab, dtype=dtype):
                g = torch.Generator(device=dev).manual_seed(0)
                hidden = torch.randn(rows, hidden_size, device=dev, generator=g).to(dtype)
                weight = (torch.randn(vocab, hidden_size, device=dev, generator=g) / hidden_size**0.5).to(dtype)
                ids = torch.randint(0, vocab, (rows,), device=dev, generator=g)
                return hidden.requires_grad_(requires_grad), weight.requires_grad_(requires_grad), ids

            fns = {"bare matmul": bare_matmul, "materialised (torch)": fused_linear_logprobs_reference,
                   "materialised (torch.compile)": compiled(fused_linear_logprobs_reference),
                   "rlir fused_linear": fused_linear_logprobs}
            for mode in ("forward", "full"):
                # forward: one [M,H]x[H,V] matmul; full adds the two backward matmuls (and ours recomputes one)
                flops = 2 * rows * hidden_size * vocab * (1 if mode == "forward" else 3)
                builders = {k: provider(f, make_inputs, mode) for k, f in fns.items()}
                builders["liger fused_linear_cross_entropy"] = liger_provider(make_inputs, mode, dev)
                out.append(Case("fused_linear_logprobs", {"M": rows, "H": hidden_size, "V": vocab}, dtype_name, mode,
                                builders, flops=flops))
    return out


if __name__ == "__main__":
    main("fused_linear_logprobs", cases, __doc__)
