import json
import math

import numpy as np
import pytest
import torch

from rlir.envs import get_action_space
from rlir.metrics import classification_report, confusion_matrix, format_report, plot_confusion, precision_recall_f1


def test_hand_computed_example():
    targets = [0, 0, 1, 1, 2, 2]
    predictions = [0, 1, 1, 1, 0, 2]
    confusion = confusion_matrix(targets, predictions, 3)
    np.testing.assert_array_equal(confusion, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    m = precision_recall_f1(confusion)
    np.testing.assert_allclose(m.precision, [1 / 2, 2 / 3, 1])
    np.testing.assert_allclose(m.recall, [1 / 2, 1, 1 / 2])
    np.testing.assert_allclose(m.f1, [1 / 2, 4 / 5, 2 / 3])
    np.testing.assert_array_equal(m.support, [2, 2, 2])


def test_undefined_values_are_nan_and_f1_is_zero_for_a_class_never_hit():
    # class 0: 1 of 2 right; class 1: predicted once, never occurs; class 2: neither occurs nor is predicted
    m = precision_recall_f1(confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 1]), 3))
    np.testing.assert_allclose(m.precision, [1, 0, math.nan])
    np.testing.assert_allclose(m.recall, [1 / 2, math.nan, math.nan])
    np.testing.assert_allclose(m.f1, [2 / 3, 0, math.nan])


def brute_force(targets, predictions, classes):
    """Per-class precision, recall, F1 by counting, with the module's NaN conventions."""
    out = []
    for c in range(classes):
        tp = sum(1 for t, p in zip(targets, predictions) if t == c and p == c)
        fp = sum(1 for t, p in zip(targets, predictions) if t != c and p == c)
        fn = sum(1 for t, p in zip(targets, predictions) if t == c and p != c)
        precision = tp / (tp + fp) if tp + fp else math.nan
        recall = tp / (tp + fn) if tp + fn else math.nan
        if math.isnan(precision) and math.isnan(recall):
            f1 = math.nan
        elif tp == 0:
            f1 = 0.0
        else:
            f1 = 2 * precision * recall / (precision + recall)
        out.append((precision, recall, f1, tp + fn))
    return np.array(out)


@pytest.mark.parametrize("seed", range(4))
def test_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    sizes = [2, 5, 17]
    n = int(rng.integers(1, 200))
    # skewed so that some classes are rare or absent
    targets = np.stack([np.minimum(rng.geometric(0.4, n) - 1, c - 1) for c in sizes], axis=1)
    predictions = np.where(rng.random((n, 3)) < 0.6, targets, np.stack([rng.integers(0, c, n) for c in sizes], 1))
    report = classification_report(targets, predictions, sizes)
    for h, (head, size) in enumerate(zip(report.heads, sizes)):
        expected = brute_force(targets[:, h], predictions[:, h], size)
        m = head.metrics
        np.testing.assert_allclose(np.stack([m.precision, m.recall, m.f1, m.support], 1), expected)
        counts = np.zeros((size, size), dtype=np.int64)
        for t, p in zip(targets[:, h], predictions[:, h]):
            counts[t, p] += 1
        np.testing.assert_array_equal(head.confusion, counts)
        assert head.accuracy == pytest.approx(np.mean(targets[:, h] == predictions[:, h]))
        assert head.macro_f1 == pytest.approx(np.nanmean(expected[:, 2]))
        assert head.weighted_f1 == pytest.approx(np.nansum(expected[:, 2] * expected[:, 3]) / n)
    assert report.frame_accuracy == pytest.approx(np.mean(np.all(targets == predictions, axis=1)))


def test_report_names_classes_serialises_and_plots(tmp_path):
    space = get_action_space("crafter")
    targets = np.array([[1], [1], [2], [0]])
    predictions = np.array([[1], [2], [2], [0]])
    report = classification_report(targets, predictions, space)
    data = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert data["count"] == 4 and data["frame_accuracy"] == 0.75
    move_left = data["heads"][0]["classes"]["move_left"]
    assert move_left == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert data["heads"][0]["classes"]["sleep"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    table = format_report(report)
    assert "move_left" in table and "make_iron_sword" in table and "frame accuracy" in table
    path = plot_confusion(report, tmp_path / "confusion.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("call, message", [
    (lambda: confusion_matrix([0, 3], [0, 1], 3), "targets"),
    (lambda: confusion_matrix([0, 1], [0, -1], 3), "predictions"),
    (lambda: confusion_matrix([0, 1], [0], 3), "one shape"),
    (lambda: confusion_matrix([0.5], [0], 3), "integer"),
    (lambda: confusion_matrix([0], [0], 0), "num_classes"),
    (lambda: precision_recall_f1(np.zeros((2, 3), dtype=int)), "square"),
    (lambda: classification_report(np.zeros((3, 2), dtype=int), np.zeros((3, 2), dtype=int), [4]), "heads"),
    (lambda: classification_report(np.zeros((3, 1), dtype=int), np.zeros((3, 1), dtype=int), []), "action_space"),
])
def test_bad_inputs_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()
