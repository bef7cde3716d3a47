"""group_advantage and the fused IDM reward -> advantage path (idm_advantage).
Providers: the PyTorch reference, torch.compile of it, and on CUDA the rlir Triton kernels.
Run: python benchmarks/bench_group_advantage.py [--out DIR]"""
from __future__ import annotations

import torch

from harness import Case, compiled, device, main, provider
from rlir.kernels import group_advantage, group_advantage_reference, idm_advantage, idm_reward_reference

CRAFTER_HEADS = [17]
MINECRAFT_HEADS = [3, 3, 3, 2, 2, 2, 2, 11, 11]


def advantage_cases(dev):
    out = []
    for n, g in [(256, 8), (65536, 16)]:
        def make_inputs(requires_grad, n=n):
            return (torch.rand(n, device=dev, generator=torch.Generator(device=dev).manual_seed(0)),)

        fns = {"torch": lambda r, g=g: group_advantage_reference(r, group_size=g),
               "torch.compile": compiled(lambda r, g=g: group_advantage_reference(r, group_size=g))}
        if dev.type == "cuda":
            fns["rlir-triton"] = lambda r, g=g: group_advantage(r, group_size=g)
        out.append(Case("group_advantage", {"N": n, "G": g}, "fp32", "forward",
                        {k: provider(f, make_inputs, "forward") for k, f in fns.items()}, bytes_moved=8 * n))
    return out


def reward_cases(dev):
    out = []
    for space, heads in {"crafter": CRAFTER_HEADS, "minecraft": MINECRAFT_HEADS}.items():
        for n, t, g in [(64, 16, 8), (1024, 16, 16)]:
            def make_inputs(requires_grad, n=n, t=t, heads=heads):
                gen = torch.Generator(device=dev).manual_seed(0)
                logits = torch.randn(n, t, sum(heads), device=dev, generator=gen)
                actions = torch.stack([torch.randint(0, c, (n, t), device=dev, generator=gen) for c in heads], -1)
                return logits, actions

            def reference(logits, actions, heads=heads, g=g):
                reward = idm_reward_reference(logits, actions, head_sizes=heads).reward
                return group_advantage_reference(reward, group_size=g)

            def ours(logits, actions, heads=heads, g=g):
                return idm_advantage(logits, actions, head_sizes=heads, group_size=g)[1]

            fns = {"torch": reference, "torch.compile": compiled(reference)}
            if dev.type == "cuda":
                fns["rlir-triton"] = ours
            traffic = n * t * (sum(heads) * 4 + len(heads) * 8)
            out.append(Case("idm_advantage", {"N": n, "T": t, "heads": len(heads)}, "fp32", "forward",
                            {k: provider(f, make_inputs, "forward") for k, f in fns.items()},
                            bytes_moved=traffic, notes={"action_space": space}))
    return out


def cases():
    dev = device()
    return advantage_cases(dev) + reward_cases(dev)


if __name__ == "__main__":
    main("group_advantage", cases, __doc__)
