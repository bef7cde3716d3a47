"""flow_sde_step: one Flow-GRPO SDE step over video latents [N, C, T, H, W].
Two uses: sampling (rollouts: forward only, noise given) and scoring a recorded transition (training:
log_prob, backward into v). Providers: the PyTorch reference, torch.compile of it, and on CUDA the rlir
Triton kernels. Run: python benchmarks/bench_flow_sde_step.py [--out DIR]"""
from __future__ import annotations

import torch

from harness import Case, compiled, device, main, provider
from rlir.kernels import flow_sde_step, flow_sde_step_reference

SIGMA, SIGMA_NEXT, NOISE_LEVEL = 0.6, 0.55, 0.7
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sample_reference(x, v, noise):
    return flow_sde_step_reference(x, v, SIGMA, SIGMA_NEXT, NOISE_LEVEL, noise=noise)


def sample_ours(x, v, noise):
    return flow_sde_step(x, v, SIGMA, SIGMA_NEXT, NOISE_LEVEL, noise=noise)


def score_reference(x, v, x_next):
    return flow_sde_step_reference(x, v, SIGMA, SIGMA_NEXT, NOISE_LEVEL, x_next=x_next)


def score_ours(x, v, x_next):
    return flow_sde_step(x, v, SIGMA, SIGMA_NEXT, NOISE_LEVEL, x_next=x_next)


def log_prob_sum(out):
    return out.log_prob.sum()


def cases():
    dev = device()
    # [N, C, T, H, W]: 16-channel latents of 8 / 16 frames at 32x32 (GPU), smaller on CPU.
    shapes = [(8, 16, 8, 32, 32), (32, 16, 16, 32, 32)] if dev.type == "cuda" else [(4, 4, 4, 16, 16),
                                                                                    (8, 16, 4, 16, 16)]
    out = []
    for shape in shapes:
        named = dict(zip("NCTHW", shape))
        numel = torch.Size(shape).numel()
        for dtype_name, dtype in DTYPES.items():
            size = numel * torch.tensor([], dtype=dtype).element_size()

            def sample_inputs(requires_grad, shape=shape, dtype=dtype):
                g = torch.Generator(device=dev).manual_seed(0)
                x, v, noise = (torch.randn(shape, device=dev, generator=g).to(dtype) for _ in range(3))
                return x, v.requires_grad_(requires_grad), noise

            def score_inputs(requires_grad, shape=shape, dtype=dtype):
                x, v, noise = sample_inputs(False, shape, dtype)
                x_next = flow_sde_step_reference(x, v, SIGMA, SIGMA_NEXT, NOISE_LEVEL, noise=noise).x_next
                return x, (v + 0.01 * noise).requires_grad_(requires_grad), x_next

            sample_fns = {"torch": sample_reference, "torch.compile": compiled(sample_reference)}
            score_fns = {"torch": score_reference, "torch.compile": compiled(score_reference)}
            if dev.type == "cuda":
                sample_fns["rlir-triton"] = sample_ours
                score_fns["rlir-triton"] = score_ours
            # sampling: read x, v, noise; write mean, x_next.
            out.append(Case("flow_sde_step.sample", named, dtype_name, "forward",
                            {k: provider(f, sample_inputs, "forward") for k, f in sample_fns.items()},
                            bytes_moved=5 * size))
            # scoring + backward of log_prob into v: read x, v, x_next, write mean; read x, v, x_next, write dv.
            out.append(Case("flow_sde_step.score", named, dtype_name, "full",
                            {k: provider(f, score_inputs, "full", to_scalar=log_prob_sum)
                             for k, f in score_fns.items()},
                            bytes_moved=8 * size))
    return out


if __name__ == "__main__":
    main("flow_sde_step", cases, __doc__)
