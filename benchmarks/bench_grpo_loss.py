"""grpo_loss (from log-probs), grpo_loss_from_logits (fused with token_logprobs) and fused_linear_grpo_loss
(from hidden states, the [M, V] logits never materialised).
Providers: the PyTorch reference, torch.compile of it, an unfused log_softmax.gather + reference loss,
on CUDA the rlir Triton kernels, and Liger-Kernel where it has the op: its Triton ``triton_grpo_loss``
from logits (CUDA only) and its chunked ``LigerFusedLinearGRPOLoss`` from hidden states (PyTorch + torch.compile,
so it runs on CPU too). Every provider computes the same loss: token-mean (Liger's "dapo"), clip 0.2/0.2,
k3 KL with beta 0.04. Run: python benchmarks/bench_grpo_loss.py [--out DIR]"""
from __future__ import annotations

import torch

from harness import installed, unavailable
from harness import Case, compiled, device, main, provider
from rlir.kernels import (fused_linear_grpo_loss, grpo_loss, grpo_loss_from_logits, grpo_loss_reference,
                          token_logprobs_reference)

BETA = 0.04
NOT_INSTALLED = "liger-kernel is not installed (pip install -e '.[bench]')"


def loss_inputs(n, t, dev, g):
    old = -torch.rand(n, t, device=dev, generator=g) * 3
    ref = old + 0.05 * torch.randn(n, t, device=dev, generator=g)
    adv = torch.randn(n, device=dev, generator=g)
    mask = torch.rand(n, t, device=dev, generator=g) < 0.9
    return old, adv, mask, ref


def reference_from_logits(logits, ids, old, adv, mask, ref):
    return grpo_loss_reference(token_logprobs_reference(logits, ids), old, adv, mask, ref, beta=BETA)


def unfused_from_logits(logits, ids, old, adv, mask, ref):
    logp = torch.log_softmax(logits.float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return grpo_loss_reference(logp, old, adv, mask, ref, beta=BETA)


def fused_from_logits(logits, ids, old, adv, mask, ref):
    return grpo_loss_from_logits(logits, ids, old, adv, mask, ref, beta=BETA)


def liger_triton_from_logits(logits, ids, old, adv, mask, ref):
    """Liger's logits are [N, T+1, V] (HF layout: the last position predicts nothing). inplace=False: with True
    its backward overwrites the logits, which the timing loop reuses."""
    from liger_kernel.transformers.grpo_loss import triton_grpo_loss

    loss, _ = triton_grpo_loss(logits, old, ref, ids, adv, mask, temperature=1.0, beta=BETA, eps_low=0.2,
                               eps_high=0.2, inplace=False, loss_type="dapo", reduce=True)
    return loss


def liger_triton_provider(make_inputs, mode, dev):
    if not installed("liger_kernel"):
        return unavailable(NOT_INSTALLED)
    if dev.type != "cuda":
        return unavailable("Liger's triton_grpo_loss is a Triton kernel: needs a CUDA device")

    def make_liger_inputs(requires_grad):
        logits, *rest = make_inputs(False)
        extra = torch.zeros_like(logits[:, :1])  # the unused last position of Liger's layout
        return (torch.cat((logits, extra), dim=1).requires_grad_(requires_grad), *rest)

    return provider(liger_triton_from_logits, make_liger_inputs, mode)


def loss_cases(dev):
    out = []
    for n, t in [(64, 1040), (512, 1024)]:
        def make_inputs(requires_grad, n=n, t=t):
            g = torch.Generator(device=dev).manual_seed(0)
            old, adv, mask, ref = loss_inputs(n, t, dev, g)
            logp = (old + 0.1 * torch.randn(n, t, device=dev, generator=g)).requires_grad_(requires_grad)
            return logp, old, adv, mask, ref

        def ref_fn(logp, old, adv, mask, ref):
            return grpo_loss_reference(logp, old, adv, mask, ref, beta=BETA)

        def ours(logp, old, adv, mask, ref):
            return grpo_loss(logp, old, adv, mask, ref, beta=BETA)

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
                builders = {k: provider(f, make_inputs, mode) for k, f in fns.items()}
                builders["liger triton_grpo_loss"] = liger_triton_provider(make_inputs, mode, dev)
                out.append(Case("grpo_loss_from_logits", {"N": n, "T": t, "V": vocab}, dtype_name, mode, builders,
                                bytes_moved=traffic))
    return out


def materialised_from_hidden(hidden, weight, ids, old, adv, mask, ref):
    return reference_from_logits(hidden @ weight.T, ids, old, adv, mask, ref)


def fused_linear_from_hidden(hidden, weight, ids, old, adv, mask, ref):
    return fused_linear_grpo_loss(hidden, weight, ids, old, adv, mask, ref, beta=BETA)


def liger_chunked_from_hidden(hidden, weight, ids, old, adv, mask, ref):
    """Liger's defaults otherwise: one sequence per chunk, each chunk's loss under torch.compile."""
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    loss_fn = LigerFusedLinearGRPOLoss(beta=BETA, epsilon_low=0.2, epsilon_high=0.2, loss_type="dapo")
    return loss_fn(hidden, weight, ids, mask, adv, ref_per_token_logps=ref, old_per_token_logps=old)


def fused_linear_cases(dev):
    """(N, T, H, V): the AR world model's head, then LLM heads (the shapes of bench_fused_linear_logprobs)."""
    if dev.type == "cuda":
        shapes, dtypes = [(16, 1024, 256, 512), (8, 1024, 1024, 32768), (8, 1024, 4096, 152064)], ("fp32", "bf16")
    else:  # CPU bf16 matmuls are not representative of anything users run
        shapes, dtypes = [(8, 256, 256, 512), (4, 256, 512, 32768)], ("fp32",)
    out = []
    for n, t, hidden_size, vocab in shapes:
        for dtype_name in dtypes:
            def make_inputs(requires_grad, n=n, t=t, hidden_size=hidden_size, vocab=vocab,
                            dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]):
                g = torch.Generator(device=dev).manual_seed(0)
                hidden = torch.randn(n, t, hidden_size, device=dev, generator=g).to(dtype)
                weight = (torch.randn(vocab, hidden_size, device=dev, generator=g) / hidden_size**0.5).to(dtype)
                ids = torch.randint(0, vocab, (n, t), device=dev, generator=g)
                with torch.no_grad():
                    old = token_logprobs_reference(hidden @ weight.T, ids) + 0.05 * torch.randn(
                        n, t, device=dev, generator=g)
                _, adv, mask, ref = loss_inputs(n, t, dev, g)
                return (hidden.requires_grad_(requires_grad), weight.requires_grad_(requires_grad), ids, old, adv,
                        mask, ref)

            fns = {"materialised (torch)": materialised_from_hidden,
                   "materialised (torch.compile)": compiled(materialised_from_hidden),
                   "rlir fused_linear": fused_linear_from_hidden}
            if installed("liger_kernel"):
                fns["liger chunked"] = liger_chunked_from_hidden
            for mode in ("forward", "full"):
                builders = {k: provider(f, make_inputs, mode) for k, f in fns.items()}
                if "liger chunked" not in fns:
                    builders["liger chunked"] = unavailable(NOT_INSTALLED)
                # forward: one [M,H]x[H,V] matmul; full adds the two backward matmuls
                flops = 2 * n * t * hidden_size * vocab * (1 if mode == "forward" else 3)
                out.append(Case("fused_linear_grpo_loss", {"N": n, "T": t, "H": hidden_size, "V": vocab},
                                dtype_name, mode, builders, flops=flops))
    return out


def cases():
    dev = device()
    return loss_cases(dev) + from_logits_cases(dev) + fused_linear_cases(dev)


if __name__ == "__main__":
    main("grpo_loss", cases, __doc__)
