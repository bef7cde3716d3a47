"""token_logprobs: per-token log-probs from logits. Providers: the PyTorch reference, torch.compile of it,
``log_softmax(...).gather`` (what most trainers do), TRL's ``selective_log_softmax`` (its Triton kernel on
CUDA, its PyTorch loop on CPU), and on CUDA the rlir Triton kernel and Liger-Kernel's Triton
``fused_selective_log_softmax`` (forward only: it has no backward). Providers that cannot run here are listed
with the reason. Run: python benchmarks/bench_token_logprobs.py [--out DIR]"""
from __future__ import annotations

import torch

from harness import Case, compiled, device, installed, main, provider, unavailable
from rlir.kernels import token_logprobs, token_logprobs_reference

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# TRL and Liger take logits [B, L, V] (TRL loops over B on CPU): the rows are laid out as this many sequences.
SEQUENCES = 8


def log_softmax_gather(logits, ids):
    return torch.log_softmax(logits.float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def trl_selective_log_softmax(logits, ids):
    from trl.trainer.utils import selective_log_softmax

    vocab = logits.shape[-1]
    return selective_log_softmax(logits.view(SEQUENCES, -1, vocab), ids.view(SEQUENCES, -1)).view(-1)


def liger_selective_log_softmax(logits, ids):
    """Liger reads logits [B, L+1, V] (the last position predicts nothing), so it scores one row fewer per
    sequence than the other providers (8 of 8192 rows on the CUDA shapes)."""
    from liger_kernel.ops.grpo_loss import fused_selective_log_softmax

    vocab = logits.shape[-1]
    return fused_selective_log_softmax(logits.view(SEQUENCES, -1, vocab), ids.view(SEQUENCES, -1), 1.0)


def external_providers(mode, make_inputs, dev):
    """TRL and Liger builders for one case, or ``unavailable`` ones saying why they cannot run."""
    out = {}
    if installed("trl"):
        out["trl selective_log_softmax"] = provider(trl_selective_log_softmax, make_inputs, mode)
    else:
        out["trl selective_log_softmax"] = unavailable("trl is not installed (pip install -e '.[bench]')")
    if mode == "forward":
        name = "liger selective_log_softmax"
        if not installed("liger_kernel"):
            out[name] = unavailable("liger-kernel is not installed (pip install -e '.[bench]')")
        elif dev.type != "cuda":
            out[name] = unavailable("Liger's fused_selective_log_softmax is a Triton kernel: needs a CUDA device")
        else:
            out[name] = provider(liger_selective_log_softmax, make_inputs, mode)
    return out


def shapes():
    if torch.cuda.is_available():  # the AR world model's vocabulary, then LLM vocabularies
        return [(8192, 600), (8192, 32768), (8192, 152064)]
    return [(2048, 600), (1024, 32768)]


def cases(modes=("forward", "backward", "full")):
    dev = device()
    out = []
    for rows, vocab in shapes():
        for dtype_name, dtype in DTYPES.items():
            def make_inputs(requires_grad, rows=rows, vocab=vocab, dtype=dtype):
                g = torch.Generator(device=dev).manual_seed(0)
                logits = torch.randn(rows, vocab, device=dev, generator=g).to(dtype).requires_grad_(requires_grad)
                return logits, torch.randint(0, vocab, (rows,), device=dev, generator=g)

            size = rows * vocab * torch.tensor([], dtype=dtype).element_size()
            for mode in modes:
                fns = {"torch": token_logprobs_reference, "torch.compile": compiled(token_logprobs_reference),
                       "log_softmax.gather": log_softmax_gather}
                if dev.type == "cuda":
                    fns["rlir-triton"] = token_logprobs
                builders = {k: provider(f, make_inputs, mode) for k, f in fns.items()}
                builders.update(external_providers(mode, make_inputs, dev))
                # roofline traffic: forward reads the logits once; backward reads them and writes their grad
                traffic = {"forward": size, "backward": 2 * size, "full": 3 * size}[mode]
                out.append(Case("token_logprobs", {"rows": rows, "V": vocab}, dtype_name, mode, builders,
                                bytes_moved=traffic))
    return out


if __name__ == "__main__":
    main("token_logprobs", cases, __doc__)
