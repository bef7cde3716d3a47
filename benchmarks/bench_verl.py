"""verl's actor from logits to gradient, as verl ships it and with rlir.integrations.verl turned on.

The same inputs go through verl's own functions, looked up where verl's FSDP engine and ppo_loss look them up
(``verl.utils.torch_functional`` and the policy-loss registry), once unpatched and once after ``patch_verl()``:
  logprobs     logprobs_from_logits on packed logits [tokens, V], forward + backward
  policy_loss  the policy loss (``vanilla`` vs ``rlir_grpo``; DAPO settings: clip 0.2/0.28, token-mean)
               on [B, T] log-probs, forward + backward
  actor_step   both log-probs and entropies from the logits (what the engine computes when it logs entropy),
               padded into [B, T], the policy loss and the entropy term of verl's ppo_loss, then backward
Each (case, path) runs in a fresh process, so that its peak memory (CUDA allocator peak, or the process's
max-RSS on CPU) is its own; the number is the extra memory above the inputs. The ratios are rlir / verl.
On CPU rlir's kernels dispatch to their PyTorch references (Triton runs on CUDA tensors only), so CPU ratios
say nothing about the Triton kernels on a GPU. verl's own path on GPU uses flash-attn's cross-entropy for the
log-probs when flash-attn is installed.
Run: python benchmarks/bench_verl.py [--out DIR] [--repeats 5]"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

CASES = ("logprobs", "policy_loss", "actor_step")
PATHS = ("verl", "rlir")

CHILD = r"""
import json, os, statistics, sys, time
import torch
case, path, sequences, max_len, vocab, dtype_name, repeats = sys.argv[1:8]
sequences, max_len, vocab, repeats = int(sequences), int(max_len), int(vocab), int(repeats)
from rlir.integrations.verl import patch_verl
from rlir.profiling import current_rss_bytes, max_rss_bytes
# rlir is imported: now drop the repository root (a PYTHONPATH entry or the working directory) from sys.path, so
# that its kernels/ folder does not pass for the `kernels` package transformers (imported by verl) looks for.
sys.path[:] = [p for p in sys.path if not os.path.isfile(os.path.join(p or ".", "kernels", "_launch.py"))]
import verl.utils.torch_functional as verl_F
import verl.trainer.ppo.core_algos as core_algos
from verl.workers.config import FSDPActorConfig
if path == "rlir":
    patch_verl()
dev = "cuda" if torch.cuda.is_available() else "cpu"
dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
g = torch.Generator(device=dev).manual_seed(0)
lengths = torch.randint(max_len // 2, max_len + 1, (sequences,), generator=g, device=dev)
mask = torch.arange(max_len, device=dev) < lengths[:, None]
tokens = int(mask.sum())
config = FSDPActorConfig(strategy="fsdp", rollout_n=8, ppo_micro_batch_size_per_gpu=sequences, clip_ratio_low=0.2,
                         clip_ratio_high=0.28, loss_agg_mode="token-mean")
loss_fn = core_algos.get_policy_loss_fn("rlir_grpo" if path == "rlir" else "vanilla")
advantages = torch.randn(sequences, 1, generator=g, device=dev).expand(sequences, max_len).contiguous()
old = torch.randn(sequences, max_len, generator=g, device=dev) * 0.1 - 2.0
if case == "policy_loss":
    leaf = (old + torch.randn(sequences, max_len, generator=g, device=dev) * 0.1).requires_grad_()
    input_bytes = leaf.numel() * 4
    def work():
        loss, _ = loss_fn(old, leaf, advantages, mask, "token-mean", config)
        return torch.autograd.grad(loss, leaf)
else:
    leaf = torch.randn(tokens, vocab, generator=g, device=dev).to(dtype).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), generator=g, device=dev)
    input_bytes = leaf.numel() * leaf.element_size()
    def padded(packed):
        return torch.zeros(sequences, max_len, dtype=packed.dtype, device=dev).masked_scatter(mask, packed)
    def work():
        log_probs = verl_F.logprobs_from_logits(leaf, labels)
        if case == "logprobs":
            return torch.autograd.grad(log_probs.float().sum(), leaf)
        entropy = verl_F.entropy_from_logits(leaf)
        loss, _ = loss_fn(old, padded(log_probs.float()), advantages, mask, "token-mean", config)
        loss = loss - 0.001 * core_algos.agg_loss(padded(entropy.float()), mask, "token-mean")
        return torch.autograd.grad(loss, leaf)
def sync():
    if dev == "cuda":
        torch.cuda.synchronize()
if dev == "cuda":
    sync(); base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
else:
    base = current_rss_bytes()
work(); sync()  # the first call's peak is the one measured (allocator caches nothing on CPU)
peak = (torch.cuda.max_memory_allocated() if dev == "cuda" else max_rss_bytes()) - base
times = []
for _ in range(repeats):
    t0 = time.perf_counter(); work(); sync(); times.append((time.perf_counter() - t0) * 1e3)
print(json.dumps({"median_ms": statistics.median(times), "extra_bytes": int(peak), "tokens": tokens,
                  "input_bytes": input_bytes, "device": dev}))
"""


def shapes(cuda: bool) -> dict:
    """B sequences of up to T response tokens (lengths drawn in [T/2, T]), vocabulary V, logits dtype."""
    if cuda:  # an LLM's actor micro-batch: Qwen2.5's vocabulary, bf16 logits
        return dict(sequences=8, max_len=1024, vocab=151936, dtype="bf16")
    return dict(sequences=8, max_len=256, vocab=32768, dtype="fp32")


def measure(case: str, path: str, shape: dict, repeats: int) -> dict:
    args = [case, path, shape["sequences"], shape["max_len"], shape["vocab"], shape["dtype"], repeats]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{case}/{path} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(repeats: int) -> tuple:
    import torch

    cuda = torch.cuda.is_available()
    shape = shapes(cuda)
    rows, ratios = [], {}
    for case in CASES:
        by_path = {}
        for path in PATHS:
            r = {"case": case, "path": path, **shape, **measure(case, path, shape, repeats)}
            by_path[path] = r
            rows.append(r)
        ours, theirs = by_path["rlir"], by_path["verl"]
        ratios[case] = {"time": ours["median_ms"] / theirs["median_ms"],
                        "peak_memory": ours["extra_bytes"] / max(theirs["extra_bytes"], 1)}
        for r in (theirs, ours):
            print(f"{case:<12} {r['path']:<5} {r['tokens']:>6} tokens V={r['vocab']} {r['dtype']}  "
                  f"{r['median_ms']:9.2f} ms  extra {r['extra_bytes'] / 2**20:8.1f} MiB", flush=True)
        print(f"{case:<12} rlir/verl: time {ratios[case]['time']:.2f}x, peak memory {ratios[case]['peak_memory']:.2f}x",
              flush=True)
    return rows, ratios


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per path after the measured first call")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    try:  # the version only: importing verl here would import transformers in this process too
        version = importlib.metadata.version("verl")
    except importlib.metadata.PackageNotFoundError:
        sys.exit("bench_verl.py needs verl (pip install '.[verl]' and verl==0.9.1 --no-deps, as .ci/run does)")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from harness import write_results

    rows, ratios = run(args.repeats)
    write_results("verl", rows, args.out, extra={"verl": version, "ratios_rlir_over_verl": ratios})


if __name__ == "__main__":
    main()
