"""`rlir kernels check`: run every kernel's fast path against its float64 PyTorch reference.
`rlir kernels compile`: compile every kernel for GPUs (no GPU needed) and print registers, shared memory, spills.

On a GPU the fast path is the compiled Triton kernel; on CPU it is the same kernel under the Triton
interpreter (so the check is slow-ish but real). Prints one line per op with the max error and time.
"""
from __future__ import annotations

import os
import sys
import time


def register(subparsers) -> None:
    parser = subparsers.add_parser("kernels", help="check the Triton kernels against their references")
    sub = parser.add_subparsers(dest="kernels_command", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="every kernel vs its float64 reference on random inputs")
    check.add_argument("--seed", type=int, default=0)
    check.set_defaults(func=run_check)
    compile_ = sub.add_parser("compile", help="compile every kernel for sm_90 / sm_100 with the ops' launch "
                              "configurations (no GPU needed): registers, shared memory, spills")
    compile_.add_argument("--arch", type=int, nargs="+", default=[90], metavar="SM",
                          help="compute capabilities to compile for (default: 90; H100 90, B200 100)")
    compile_.add_argument("--json", metavar="PATH", help="also write the records as JSON")
    compile_.set_defaults(func=run_compile)


def _cases(torch, K, dev, gen):
    """(name, fast path, float64 reference, tolerance) for each op, on fresh random inputs."""

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(dev)

    rewards = torch.rand(24, generator=gen).to(dev)
    rewards[5] = float("nan")
    yield ("group_advantage", lambda: K.group_advantage(rewards, group_size=6),
           lambda: K.group_advantage_reference(rewards.double(), group_size=6), 1e-4)

    heads = [randn(6, 5, 17), randn(6, 5, 3)]
    actions = torch.stack([torch.randint(0, 17, (6, 5), generator=gen),
                           torch.randint(0, 3, (6, 5), generator=gen)], -1).to(dev)
    actions[..., 0] = heads[0].argmax(-1)  # make matches likely enough to be interesting
    yield ("idm_reward", lambda: K.idm_reward(heads, actions).reward,
           lambda: K.idm_reward_reference([h.double() for h in heads], actions).reward, 1e-6)

    logits = randn(3, 7, 1000).requires_grad_()
    ids = torch.randint(0, 1000, (3, 7), generator=gen).to(dev)

    def with_grad(fn, x):
        def run():
            out = fn(x)
            (grad,) = torch.autograd.grad(out.sum(), x)
            return torch.cat([out.flatten().double(), grad.flatten().double()])
        return run

    yield ("token_logprobs (+grad)", with_grad(lambda z: K.token_logprobs(z, ids, 0.7), logits),
           with_grad(lambda z: K.token_logprobs_reference(z.double(), ids, 0.7), logits), 1e-4)

    old = -torch.rand(3, 7, generator=gen).to(dev) * 5
    ref = old + 0.1 * randn(3, 7)
    adv = randn(3)
    mask = torch.rand(3, 7, generator=gen).to(dev) > 0.2

    def loss_of(fn, z):
        return fn(z, ids, old, adv, mask, ref, beta=0.04, eps_high=0.28)[0]

    def reference_from_logits(z, ids, *loss_args, **loss_kwargs):
        return K.grpo_loss_reference(K.token_logprobs_reference(z.double(), ids), *loss_args, **loss_kwargs)

    yield ("grpo_loss_from_logits (+grad)", with_grad(lambda z: loss_of(K.grpo_loss_from_logits, z), logits),
           with_grad(lambda z: loss_of(reference_from_logits, z), logits), 1e-4)

    x, v, noise = randn(3, 4, 37), randn(3, 4, 37).requires_grad_(), randn(3, 4, 37)
    sigma = torch.tensor([1.0, 0.6, 0.3]).to(dev)

    def sde(step, cast):
        def run():
            sampled = step(cast(x), cast(v), sigma, sigma - 0.1, 0.7, noise=cast(noise))
            scored = step(cast(x), cast(v), sigma, sigma - 0.1, 0.7, x_next=sampled.x_next.detach())
            (grad,) = torch.autograd.grad(scored.log_prob.sum(), v)
            return torch.cat([t.flatten().double() for t in (sampled.x_next, sampled.mean, sampled.log_prob,
                                                             scored.log_prob, grad)])
        return run

    yield ("flow_sde_step (+grad)", sde(K.flow_sde_step, lambda t: t),
           sde(K.flow_sde_step_reference, lambda t: t.double()), 1e-4)

    hidden, weight = randn(3, 5, 16).requires_grad_(), (0.5 * randn(300, 16)).requires_grad_()
    vocab_ids = torch.randint(0, 300, (3, 5), generator=gen).to(dev)

    def linear(fn, cast, **kwargs):
        def run():
            logp, entropy = fn(cast(hidden), cast(weight), vocab_ids, 0.7, return_entropy=True, **kwargs)
            grads = torch.autograd.grad((logp + 0.1 * entropy).sum(), (hidden, weight))
            return torch.cat([t.flatten().double() for t in (logp, entropy, *grads)])
        return run

    # chunk_size 4: 15 rows in 4 chunks (the last one partial), grad weight accumulated across them
    yield ("fused_linear_logprobs (+grad)", linear(K.fused_linear_logprobs, lambda t: t, chunk_size=4),
           linear(K.fused_linear_logprobs_reference, lambda t: t.double()), 1e-4)


def run_check(args) -> int:
    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu and os.environ.get("TRITON_INTERPRET") != "1":
        # Triton reads TRITON_INTERPRET when a kernel is decorated, and building the CLI has already imported
        # the kernels: rerun this command in a fresh interpreter with the variable set.
        os.environ["TRITON_INTERPRET"] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "rlir", "kernels", "check", "--seed", str(args.seed)])
    os.environ["RLIR_KERNELS"] = "triton"
    import rlir.kernels as K

    dev = torch.device("cuda" if on_gpu else "cpu")
    gen = torch.Generator().manual_seed(args.seed)
    print(f"rlir kernels check on {dev} ({'compiled Triton' if on_gpu else 'Triton interpreter'}), "
          f"seed {args.seed}")
    failures = 0
    for name, fast, reference, tol in _cases(torch, K, dev, gen):
        start = time.perf_counter()
        got = fast()
        seconds = time.perf_counter() - start
        want = reference()
        finite = torch.isfinite(want)
        err = (got.double() - want).abs()[finite].max().item() if finite.any() else 0.0
        nan_ok = bool((torch.isnan(got) == torch.isnan(want)).all())
        ok = err <= tol and nan_ok
        failures += not ok
        print(f"  {'ok  ' if ok else 'FAIL'} {name:<32} max|err| {err:.2e} (tol {tol:.0e})  {seconds * 1e3:8.1f} ms")
    print("all kernels match their references" if not failures else f"{failures} kernel(s) FAILED")
    return 1 if failures else 0


def run_compile(args) -> int:
    """Exit status 1 when a kernel spills registers."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        # The interpreter replaced triton.language's jit helpers at import: rerun in a fresh interpreter.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        argv = [sys.executable, "-m", "rlir", "kernels", "compile", "--arch", *map(str, args.arch)]
        os.execve(sys.executable, argv + (["--json", args.json] if args.json else []), env)
    import json

    from rlir.kernels._compile import compile_kernels

    start = time.perf_counter()
    builds = compile_kernels(args.arch)
    print(f"{'sm':>3}  {'kernel':<27} {'regs':>4} {'smem B':>6} {'spill st/ld B':>13} {'stack B':>7}  config")
    for b in builds:
        print(f"{b.arch:>3}  {b.kernel:<27} {b.registers:>4} {b.shared_bytes:>6} "
              f"{f'{b.spill_stores}/{b.spill_loads}':>13} {b.stack_bytes:>7}  {b.config}  [{b.workload}]")
    spilling = sorted({(b.kernel, b.arch) for b in builds if b.spill_stores or b.spill_loads})
    print(f"{len(builds)} configurations of {len({b.kernel for b in builds})} kernels compiled for "
          f"{', '.join(f'sm_{a}' for a in args.arch)} in {time.perf_counter() - start:.1f} s; "
          + (f"SPILLS in {spilling}" if spilling else "no spills"))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([b.as_dict() for b in builds], f, indent=1)
    return 1 if spilling else 0
