"""Turn the JSON under benchmarks/results/ into markdown tables (RESULTS.md) and one PNG per speed benchmark.
Run: python benchmarks/report.py [--results DIR]"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _shape(shape: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in shape.items())


def environment_line(env: dict) -> str:
    device = env.get("device", "?")
    return (f"{device}, torch {env.get('torch')}, triton {env.get('triton')}, {env.get('cpu_threads')} CPU threads, "
            f"{env.get('date')}")


def memory_table(payload: dict) -> str:
    lines = ["| comparison | provider | extra memory | vs baseline | time |", "|---|---|---:|---:|---:|"]
    for r in payload["rows"]:
        ratio = f"{r['ratio_vs_baseline']:.3f}" if r.get("ratio_vs_baseline") is not None else "baseline"
        lines.append(f"| {r['comparison']} | {r['provider']} | {r['extra_bytes'] / 2**20:,.1f} MiB | {ratio} | "
                     f"{r['seconds']:.1f} s |")
    return "\n".join(lines)


def _unavailable(row: dict) -> bool:
    return row.get("error", "").startswith("Unavailable:")


def speed_table(payload: dict) -> str:
    """One row per (op, shape, dtype, mode); one column per provider (median ms, GB/s). Providers that cannot
    run on the machine are n/a, with the reason under the table."""
    providers = list(dict.fromkeys(r["provider"] for r in payload["rows"]))
    cases = defaultdict(dict)
    reasons = {}
    for r in payload["rows"]:
        key = (r["op"], _shape(r["shape"]), r["dtype"], r["mode"])
        if _unavailable(r):
            cases[key][r["provider"]] = "n/a"
            reasons[r["provider"]] = r["error"].split(":", 1)[1].strip()
        elif "error" in r:
            cases[key][r["provider"]] = "fails"
        else:
            gbps = f" ({r['gb_per_s']:.1f} GB/s)" if r.get("gb_per_s") is not None else ""
            cases[key][r["provider"]] = f"{r['median_ms']:.3f} ms{gbps}"
    lines = ["| op | shape | dtype | mode | " + " | ".join(providers) + " |",
             "|---|---|---|---|" + "---:|" * len(providers)]
    for (op, shape, dtype, mode), cells in cases.items():
        lines.append(f"| {op} | {shape} | {dtype} | {mode} | " + " | ".join(cells.get(p, "") for p in providers) + " |")
    if reasons:
        lines.append("")
        lines += [f"- n/a: {provider}: {reason}" for provider, reason in reasons.items()]
    return "\n".join(lines)


def verl_table(payload: dict) -> str:
    """bench_verl.py: verl's actor path as shipped and with rlir.integrations.verl, and their ratios."""
    rows, ratios = payload["rows"], payload["ratios_rlir_over_verl"]
    first = rows[0]
    lines = [f"verl {payload['verl']}; {first['sequences']} sequences of up to {first['max_len']} tokens "
             f"({first['tokens']} in all), V={first['vocab']}, {first['dtype']} logits.", "",
             "| case | verl | rlir | rlir / verl time | verl extra memory | rlir extra memory | rlir / verl memory |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for case, ratio in ratios.items():
        by_path = {r["path"]: r for r in rows if r["case"] == case}
        theirs, ours = by_path["verl"], by_path["rlir"]
        lines.append(f"| {case} | {theirs['median_ms']:.2f} ms | {ours['median_ms']:.2f} ms | {ratio['time']:.2f}x | "
                     f"{theirs['extra_bytes'] / 2**20:,.1f} MiB | {ours['extra_bytes'] / 2**20:,.1f} MiB | "
                     f"{ratio['peak_memory']:.2f}x |")
    return "\n".join(lines)


def grpo_step_table(payload: dict) -> str:
    """Seconds per phase of one GRPO step: the straightforward loop, the competent one (when measured) and
    GRPOTrainer, with rlir's speedup over each."""
    seconds, speedup = payload["seconds"], payload.get("speedup", {})
    competent = payload.get("competent") if isinstance(payload.get("competent"), dict) else None
    shape = payload["shape"]
    lines = [f"B={shape['B']} prompts x G={shape['G']} samples, {shape['frames']} generated frames of "
             f"{shape['tokens_per_frame']} codes, micro-batch {shape['micro_batch']} x {shape['grad_accumulation']} "
             f"accumulation; median of {payload['repeats']} steps. Straightforward: {payload['straightforward']}."]
    if competent:
        lines.append(f"Competent: {competent['description']}.")
    columns = (["straightforward"] if "straightforward" in seconds else []) + (["competent"] if competent else [])
    lines += ["", "| phase | " + " | ".join(columns) + " | rlir | "
              + " | ".join(f"rlir vs {c}" for c in columns) + " |",
              "|---|" + "---:|" * (2 * len(columns) + 1)]
    for phase in seconds["rlir"]:
        name = f"**{phase}**" if phase == "total" else phase
        times, ratios = [], []
        for column in columns:
            theirs = seconds[column] if column == "straightforward" else competent["seconds"]
            ratio = speedup if column == "straightforward" else competent["speedup"]
            times.append(f"{theirs[phase]:.3f} s")
            ratios.append(f"{ratio[phase]:.2f}x" if phase in ratio else "")
        lines.append(f"| {name} | " + " | ".join(times) + f" | {seconds['rlir'][phase]:.3f} s | " + " | ".join(ratios)
                     + " |")
    return "\n".join(lines)


def rollout_table(payload: dict) -> str:
    """Rollouts a second, eager vs compiled (vs CUDA graphs), per config and batch."""
    lines = ["| config | videos x frames x codes | provider | s / rollout | tokens/s | frames/s | vs eager | "
             "first call (compiles) | same tokens |", "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in payload["rows"]:
        shape = r["shape"]
        size = f"{shape['B'] * shape['G']} x {shape['frames']} x {shape['F']}"
        if "error" in r:
            lines.append(f"| {r['config']} | {size} | {r['provider']} | fails: {r['error'][:80]} | | | | | |")
            continue
        lines.append(f"| {r['config']} | {size} | {r['provider']} | {r['seconds']:.3f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['frames_per_s']:.1f} | {r['speedup_vs_eager']:.2f}x | {r['first_call_s']:.1f} s | "
                     f"{r['same_tokens_as_eager']} |")
    for name, shares in payload.get("profile_percent_of_cpu_time", {}).items():
        lines.append(f"\nProfile, {name}: " + ", ".join(f"{k} {v}%" for k, v in shares.items()))
    return "\n".join(lines)


def speed_plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in payload["rows"] if "error" not in r]
    labels = list(dict.fromkeys(f"{r['op']}\n{_shape(r['shape'])}\n{r['dtype']} {r['mode']}" for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    width = 0.8 / max(1, len(providers))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels)), 4))
    for i, provider in enumerate(providers):
        xs, ys = [], []
        for r in rows:
            if r["provider"] == provider:
                xs.append(labels.index(f"{r['op']}\n{_shape(r['shape'])}\n{r['dtype']} {r['mode']}") + i * width)
                ys.append(r["median_ms"])
        ax.bar(xs, ys, width, label=provider)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, fontsize=6)
    ax.set_yscale("log")
    ax.set_ylabel("median ms (log)")
    ax.set_title(f"{payload['benchmark']} on {payload['environment'].get('device')}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    root = Path(args.results)
    sections = ["# Measured benchmark results", "",
                "Generated by `python benchmarks/report.py` from the JSON files beside this one."]
    for path in sorted(root.glob("*.json")):
        payload = json.loads(path.read_text())
        if "benchmark" not in payload:  # run_all's summary
            continue
        sections += ["", f"## {path.stem}", "", environment_line(payload["environment"]), ""]
        if payload["benchmark"] == "memory":
            sections.append(memory_table(payload))
        elif payload["benchmark"] == "grpo_step":
            sections.append(grpo_step_table(payload))
        elif payload["benchmark"] == "rollout":
            sections.append(rollout_table(payload))
        elif payload["benchmark"] == "verl":
            sections.append(verl_table(payload))
        else:
            sections.append(speed_table(payload))
            plot = path.with_suffix(".png")
            try:
                speed_plot(payload, plot)
            except ImportError:  # no matplotlib (the GPU image): tables only
                continue
            sections += ["", f"![{path.stem}]({plot.name})"]
    (root / "RESULTS.md").write_text("\n".join(sections) + "\n")
    print(f"wrote {root / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
