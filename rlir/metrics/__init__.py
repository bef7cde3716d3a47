"""Evaluation metrics: classification metrics of action predictions (per class and per action head)
and their confusion-matrix plots."""
from .classification import (
    ClassMetrics,
    ClassificationReport,
    HeadReport,
    classification_report,
    confusion_matrix,
    format_report,
    precision_recall_f1,
)
from .plots import plot_confusion

__all__ = [
    "ClassMetrics",
    "ClassificationReport",
    "HeadReport",
    "classification_report",
    "confusion_matrix",
    "format_report",
    "plot_confusion",
    "precision_recall_f1",
]
