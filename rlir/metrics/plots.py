"""Confusion-matrix figures (matplotlib, imported only when plotting, with the file-only Agg backend)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rlir.metrics.classification import ClassificationReport


def plot_confusion(report: ClassificationReport, path: Path | str, title: str = "") -> Path:
    """Write one row-normalised confusion matrix per head (cells show counts) to ``path`` (PNG, SVG, ...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = report.heads
    columns = min(3, len(heads))
    rows = -(-len(heads) // columns)
    side = max(4.0, 0.45 * max(len(h.classes) for h in heads) + 2)
    figure, axes = plt.subplots(rows, columns, figsize=(side * columns, side * rows), squeeze=False)
    for ax in axes.flat[len(heads):]:
        ax.axis("off")
    for ax, head in zip(axes.flat, heads):
        counts = head.confusion
        support = counts.sum(1, keepdims=True)
        rates = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        ticks = np.arange(len(head.classes))
        ax.set_xticks(ticks, head.classes, rotation=90, fontsize=7)
        ax.set_yticks(ticks, head.classes, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{head.name}: accuracy {head.accuracy:.3f}", fontsize=9)
        for i, j in zip(*np.nonzero(counts)):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=6,
                    color="white" if rates[i, j] > 0.5 else "black")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
