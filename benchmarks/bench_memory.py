"""Peak memory of per-token log-probs at N*T=8192, V=32768 (fp32 logits, 1 GiB): rlir's token_logprobs
vs ``log_softmax(...).gather``. Each provider runs in a fresh process so that the kernel's max-RSS counter
(CPU) or the CUDA allocator's peak sees that provider alone; the number is the extra memory above the inputs.

On CPU the Triton kernel runs through the Triton interpreter (TRITON_INTERPRET=1): slow, but its memory is
that of the kernel's algorithm (output + one block per program), which is what this measures.
Run: python benchmarks/bench_memory.py [--rows 8192] [--vocab 32768] [--out DIR]"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, os, sys, time
import torch
from rlir.profiling import current_rss_bytes, max_rss_bytes
rows, vocab, which = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
dev = "cuda" if torch.cuda.is_available() else "cpu"
g = torch.Generator(device=dev).manual_seed(0)
logits = torch.randn(rows, vocab, device=dev, generator=g)
ids = torch.randint(0, vocab, (rows,), device=dev, generator=g)
if which == "log_softmax.gather":
    fn = lambda: torch.log_softmax(logits, -1).gather(-1, ids[:, None]).squeeze(-1)
else:
    from rlir.kernels import token_logprobs, token_logprobs_reference
    fn = {"token_logprobs": token_logprobs, "token_logprobs_reference": token_logprobs_reference}[which]
    fn = (lambda f: lambda: f(logits, ids))(fn)
if dev == "cuda":
    torch.cuda.synchronize(); base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
else:
    base = current_rss_bytes()
t0 = time.perf_counter()
with torch.no_grad():
    out = fn()
seconds = time.perf_counter() - t0
peak = (torch.cuda.max_memory_allocated() if dev == "cuda" else max_rss_bytes()) - base
print(json.dumps({"provider": which, "extra_bytes": int(peak), "seconds": seconds, "device": dev,
                  "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
                  "input_bytes": logits.numel() * logits.element_size()}))
"""


def measure(rows: int, vocab: int, which: str, interpret: bool) -> dict:
    env = dict(os.environ)
    if interpret:
        env.update(TRITON_INTERPRET="1", RLIR_KERNELS="triton")
    out = subprocess.run([sys.executable, "-c", CHILD, str(rows), str(vocab), which], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(rows: int = 8192, vocab: int = 32768) -> list:
    import torch

    plan = [("log_softmax.gather", False), ("token_logprobs_reference", False)]
    # On a GPU the dispatcher picks Triton; on CPU we run the same Triton kernel through the interpreter.
    plan.append(("token_logprobs", not torch.cuda.is_available()))
    rows_out = []
    for which, interpret in plan:
        r = measure(rows, vocab, which, interpret)
        r["provider"] = which + (" (triton, interpreted)" if interpret else "")
        print(f"{r['provider']:<40} extra {r['extra_bytes'] / 2**20:9.1f} MiB  ({r['seconds']:.1f} s)", flush=True)
        rows_out.append(r)
    base = rows_out[0]["extra_bytes"]
    for r in rows_out:
        r["ratio_vs_log_softmax_gather"] = r["extra_bytes"] / base if base > 0 else None
    return rows_out


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from harness import write_results

    rows = run(args.rows, args.vocab)
    write_results("memory_token_logprobs", rows, args.out, extra={"shape": {"rows": args.rows, "V": args.vocab}})


if __name__ == "__main__":
    main()
