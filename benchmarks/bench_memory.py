"""Peak memory of the log-prob ops against what most trainers do, at the sizes the issues name:

* token_logprobs vs ``log_softmax(logits).gather`` from [8192, 32768] fp32 logits (1 GiB), forward;
* fused_linear_logprobs vs materialising ``hidden @ weight.T`` (M=8192, H=1024, V=32768, fp32),
  forward + backward (grad hidden and grad weight).

Each measurement runs in a fresh process so that the kernel's max-RSS counter (CPU) or the CUDA
allocator's peak sees that provider alone; the number is the extra memory above the inputs.
On CPU the Triton token_logprobs kernel runs through the Triton interpreter (TRITON_INTERPRET=1):
slow, but its memory is that of the kernel's algorithm (outputs + one block per program).
Run: python benchmarks/bench_memory.py [--out DIR]"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time
import torch
from rlir.profiling import current_rss_bytes, max_rss_bytes
import rlir.kernels as K
which = sys.argv[1]
dev = "cuda" if torch.cuda.is_available() else "cpu"
g = torch.Generator(device=dev).manual_seed(0)
if which in ("log_softmax.gather", "token_logprobs", "token_logprobs_reference"):
    logits = torch.randn(8192, 32768, device=dev, generator=g)
    ids = torch.randint(0, 32768, (8192,), device=dev, generator=g)
    inputs = logits.numel() * 4
    def work():
        with torch.no_grad():
            if which == "log_softmax.gather":
                return torch.log_softmax(logits, -1).gather(-1, ids[:, None]).squeeze(-1)
            return getattr(K, which)(logits, ids)
else:
    hidden = torch.randn(8192, 1024, device=dev, generator=g).requires_grad_()
    weight = (torch.randn(32768, 1024, device=dev, generator=g) / 32).requires_grad_()
    ids = torch.randint(0, 32768, (8192,), device=dev, generator=g)
    inputs = (hidden.numel() + weight.numel()) * 4
    def work():
        if which == "materialised_logits":
            logp = K.token_logprobs_reference(hidden @ weight.T, ids)
        else:
            logp = K.fused_linear_logprobs(hidden, weight, ids)
        return torch.autograd.grad(logp.sum(), (hidden, weight))
if dev == "cuda":
    torch.cuda.synchronize(); base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
else:
    base = current_rss_bytes()
t0 = time.perf_counter()
out = work()
seconds = time.perf_counter() - t0
peak = (torch.cuda.max_memory_allocated() if dev == "cuda" else max_rss_bytes()) - base
print(json.dumps({"extra_bytes": int(peak), "seconds": seconds, "device": dev, "input_bytes": inputs}))
"""

# (comparison, provider, baseline provider of the comparison, run Triton through the interpreter on CPU)
PLAN = [
    ("token_logprobs fwd [8192x32768] fp32", "log_softmax.gather", None, False),
    ("token_logprobs fwd [8192x32768] fp32", "token_logprobs_reference", "log_softmax.gather", False),
    ("token_logprobs fwd [8192x32768] fp32", "token_logprobs", "log_softmax.gather", True),
    ("fused_linear fwd+bwd M=8192 H=1024 V=32768 fp32", "materialised_logits", None, False),
    ("fused_linear fwd+bwd M=8192 H=1024 V=32768 fp32", "fused_linear_logprobs", "materialised_logits", False),
]


def measure(which: str, interpret: bool) -> dict:
    env = dict(os.environ)
    if interpret:
        env.update(TRITON_INTERPRET="1", RLIR_KERNELS="triton")
    out = subprocess.run([sys.executable, "-c", CHILD, which], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{which} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run() -> list:
    import torch

    rows, extra_by_provider = [], {}
    for comparison, which, baseline, interpret in PLAN:
        interpret = interpret and not torch.cuda.is_available()  # on a GPU the dispatcher picks Triton
        r = measure(which, interpret)
        r.update(comparison=comparison, provider=which + (" (triton, interpreted)" if interpret else ""))
        extra_by_provider[which] = r["extra_bytes"]
        if baseline:
            r["baseline"] = baseline
            r["ratio_vs_baseline"] = r["extra_bytes"] / extra_by_provider[baseline]
        ratio = f"  ratio {r['ratio_vs_baseline']:.3f} of {baseline}" if baseline else ""
        print(f"{comparison:<48} {r['provider']:<38} extra {r['extra_bytes'] / 2**20:8.1f} MiB "
              f"({r['seconds']:6.1f} s){ratio}", flush=True)
        rows.append(r)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from harness import write_results

    write_results("memory", run(), args.out)


if __name__ == "__main__":
    main()
