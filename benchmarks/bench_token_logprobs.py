"""token_logprobs: per-token log-probs from logits. Providers: the PyTorch reference, torch.compile of it,
``log_softmax(...).gather`` (what most trainers do) and, on CUDA, the rlir Triton kernel.
Run: python benchmarks/bench_token_logprobs.py [--out DIR]"""
from __future__ import annotations

import torch

from harness import Case, compiled, device, main, provider
from rlir.kernels import token_logprobs, token_logprobs_reference

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def log_softmax_gather(logits, ids):
    return torch.log_softmax(logits.float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


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
                # roofline traffic: forward reads the logits once; backward reads them and writes their grad
                traffic = {"forward": size, "backward": 2 * size, "full": 3 * size}[mode]
                out.append(Case("token_logprobs", {"rows": rows, "V": vocab}, dtype_name, mode,
                                {k: provider(f, make_inputs, mode) for k, f in fns.items()}, bytes_moved=traffic))
    return out


if __name__ == "__main__":
    main("token_logprobs", cases, __doc__)
