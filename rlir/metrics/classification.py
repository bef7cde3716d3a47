"""Precision, recall, F1 and confusion matrices of predicted actions, per class and per action head.

Conventions (as scikit-learn's, except that undefined values are NaN rather than 0 with a warning):
confusion[i, j] counts samples of true class i predicted as j. For class c with tp, fp, fn:
precision = tp / (tp + fp), NaN when c is never predicted; recall = tp / (tp + fn), NaN when c never
occurs; F1 = 2 tp / (2 tp + fp + fn), which is their harmonic mean when both exist, 0 when c occurs but
is never predicted (or the reverse), and NaN only when c neither occurs nor is predicted. Macro averages
skip NaNs, so macro F1 averages over the classes that occur or are predicted (scikit-learn's default).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np

from rlir.envs.action_space import ActionSpace


def _int_array(name: str, values, ndim: int) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != ndim or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must be a {ndim}-D integer array, got dtype {array.dtype} and shape {array.shape}")
    return array.astype(np.int64)


def confusion_matrix(targets, predictions, num_classes: int) -> np.ndarray:
    """targets, predictions: class indices [N] -> int64 [num_classes, num_classes]; rows are true classes."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    targets, predictions = _int_array("targets", targets, 1), _int_array("predictions", predictions, 1)
    if targets.shape != predictions.shape:
        raise ValueError(f"targets {targets.shape} and predictions {predictions.shape} must have one shape")
    for name, values in (("targets", targets), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} must be class indices in [0, {num_classes}), got values in "
                             f"[{values.min()}, {values.max()}]")
    flat = np.bincount(targets * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


class ClassMetrics(NamedTuple):
    precision: np.ndarray  # [C] float64, NaN where the class is never predicted
    recall: np.ndarray  # [C] float64, NaN where the class never occurs
    f1: np.ndarray  # [C] float64, NaN where the class neither occurs nor is predicted
    support: np.ndarray  # [C] int64: occurrences of each true class


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def precision_recall_f1(confusion) -> ClassMetrics:
    """Per-class metrics of a [C, C] confusion matrix (rows true, columns predicted)."""
    confusion = _int_array("confusion", confusion, 2)
    if confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be square, got shape {confusion.shape}")
    tp = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(1), confusion.sum(0)
    return ClassMetrics(
        precision=_ratio(tp, predicted),
        recall=_ratio(tp, support),
        f1=_ratio(2 * tp, support + predicted),
        support=support,
    )


def _nanmean(values: np.ndarray) -> float:
    return float(np.mean(values[~np.isnan(values)])) if not np.all(np.isnan(values)) else float("nan")


def _json_float(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


@dataclass
class HeadReport:
    """Metrics of one action head."""

    name: str
    classes: list[str]
    confusion: np.ndarray  # [C, C] int64, rows true
    metrics: ClassMetrics

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / self.count) if self.count else float("nan")

    @property
    def macro_precision(self) -> float:
        return _nanmean(self.metrics.precision)

    @property
    def macro_recall(self) -> float:
        return _nanmean(self.metrics.recall)

    @property
    def macro_f1(self) -> float:
        return _nanmean(self.metrics.f1)

    @property
    def weighted_f1(self) -> float:
        """F1 averaged over classes weighted by support."""
        support = self.metrics.support
        return float(np.nansum(self.metrics.f1 * support) / support.sum()) if support.sum() else float("nan")

    def to_json(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "name": self.name,
            "accuracy": _json_float(self.accuracy),
            "macro_precision": _json_float(self.macro_precision),
            "macro_recall": _json_float(self.macro_recall),
            "macro_f1": _json_float(self.macro_f1),
            "weighted_f1": _json_float(self.weighted_f1),
            "classes": {
                name: {"precision": _json_float(m.precision[i]), "recall": _json_float(m.recall[i]),
                       "f1": _json_float(m.f1[i]), "support": int(m.support[i])}
                for i, name in enumerate(self.classes)
            },
            "confusion": self.confusion.tolist(),
        }


@dataclass
class ClassificationReport:
    """Per-head reports plus frame accuracy: the fraction of samples with every head right (the
    paper's exact-match criterion, as in ``rlir.kernels.idm_reward``)."""

    heads: list[HeadReport]
    frame_accuracy: float
    count: int

    def macro(self, metric: str) -> float:
        """``metric`` ("precision", "recall" or "f1") macro-averaged over each head's classes, then averaged
        over the heads: MineWorld's and the paper's per-action-group score, as one number."""
        return float(np.mean([getattr(head, f"macro_{metric}") for head in self.heads]))

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "frame_accuracy": _json_float(self.frame_accuracy),
                "heads": [head.to_json() for head in self.heads]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ClassificationReport":
        """The report ``to_json`` wrote (its metrics recomputed from the confusion matrices)."""
        heads = []
        for head in data["heads"]:
            confusion = np.asarray(head["confusion"], dtype=np.int64)
            heads.append(HeadReport(head["name"], list(head["classes"]), confusion, precision_recall_f1(confusion)))
        accuracy = data["frame_accuracy"]
        return cls(heads, float("nan") if accuracy is None else accuracy, data["count"])


def classification_report(targets, predictions, action_space: ActionSpace | Sequence[int]) -> ClassificationReport:
    """targets, predictions: int [N, H] (one column per head) -> ClassificationReport.

    ``action_space`` names the heads and classes; a list of head sizes gives them numbered names.
    """
    if isinstance(action_space, ActionSpace):
        names = action_space.head_names
        classes = [list(head.classes) for head in action_space.heads]
    elif isinstance(action_space, (list, tuple)) and action_space:
        names = [f"head{h}" for h in range(len(action_space))]
        classes = [[str(c) for c in range(size)] for size in action_space]
    else:
        raise ValueError(f"action_space must be an ActionSpace or a non-empty list of head sizes, got {action_space!r}")
    targets, predictions = _int_array("targets", targets, 2), _int_array("predictions", predictions, 2)
    if targets.shape != predictions.shape:
        raise ValueError(f"targets {targets.shape} and predictions {predictions.shape} must have one shape")
    if targets.shape[1] != len(names):
        raise ValueError(f"targets have {targets.shape[1]} heads, the action space has {len(names)}")
    heads = []
    for h, (name, head_classes) in enumerate(zip(names, classes)):
        confusion = confusion_matrix(targets[:, h], predictions[:, h], len(head_classes))
        heads.append(HeadReport(name, head_classes, confusion, precision_recall_f1(confusion)))
    count = len(targets)
    frame_accuracy = float(np.all(targets == predictions, axis=1).mean()) if count else float("nan")
    return ClassificationReport(heads, frame_accuracy, count)


def format_report(report: ClassificationReport) -> str:
    """A plain-text table per head: class, support, precision, recall, F1 ("-" where undefined)."""

    def cell(value: float) -> str:
        return "    -" if np.isnan(value) else f"{value:5.3f}"

    lines = []
    for head in report.heads:
        width = max(12, *(len(c) for c in head.classes))
        lines.append(f"head {head.name!r}: accuracy {cell(head.accuracy)}, macro F1 {cell(head.macro_f1)}, "
                     f"weighted F1 {cell(head.weighted_f1)}")
        lines.append(f"  {'class':<{width}}  support  precision  recall     F1")
        m = head.metrics
        for i, name in enumerate(head.classes):
            lines.append(f"  {name:<{width}}  {m.support[i]:7d}      {cell(m.precision[i])}   {cell(m.recall[i])}  "
                         f"{cell(m.f1[i])}")
    lines.append(f"frame accuracy (every head right): {cell(report.frame_accuracy)} over {report.count} transitions")
    return "\n".join(lines)
