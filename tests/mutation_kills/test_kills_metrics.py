"""Classification and image metrics on hand-built inputs whose answers are known (docs/mutation.md: these kill
the mutants of rlir/metrics/classification.py and rlir/metrics/image.py that the metric tests let through).

- Precision / recall / F1, the per-head JSON and the printed table of a known confusion matrix, to the digit.
- Undefined values are NaN *without* a warning (the module docstring: "NaN rather than 0 with a warning"),
  for a class never predicted, a head with no samples, and an empty report.
- Every bad input is refused with a message that names the argument (targets, predictions, confusion,
  num_classes), including a float tensor that requires grad (raw logits passed by mistake).
- SSIM against an independent implementation with a hand-computed Gaussian window (11 taps, sigma 1.5 by
  default, K1 = 0.01, K2 = 0.03, L = 255, valid positions only), PSNR per frame.
"""
import math
import re
import warnings

import numpy as np
import pytest
import torch

from rlir.metrics import classification_report, confusion_matrix, format_report, precision_recall_f1
from rlir.metrics.image import psnr, ssim


@pytest.fixture(autouse=True)
def _undefined_values_warn_nothing():
    """Any warning fails the test: the module promises NaN for undefined values, not a RuntimeWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ---- classification ---------------------------------------------------------------------------------------

def test_num_classes_must_be_a_positive_int_and_one_class_is_allowed():
    np.testing.assert_array_equal(confusion_matrix([0, 0, 0], [0, 0, 0], 1), [[3]])
    for bad in (True, 2.0, 0, -1):
        with pytest.raises(ValueError, match=rf"^num_classes must be a positive int, got {re.escape(repr(bad))}$"):
            confusion_matrix([0], [0], bad)


@pytest.mark.parametrize("call, message", [
    (lambda: confusion_matrix([[0]], [0], 2),
     r"targets must be a 1-D integer array, got dtype int64 and shape (1, 1)"),
    (lambda: confusion_matrix([0], [0.5], 2),
     r"predictions must be a 1-D integer array, got dtype float64 and shape (1,)"),
    (lambda: confusion_matrix(torch.tensor([0.5], requires_grad=True), [0], 2),  # logits by mistake
     r"targets must be a 1-D integer array, got dtype float32 and shape (1,)"),
    (lambda: confusion_matrix([0, 2], [0, 1], 2), r"targets must be class indices in [0, 2), got values in [0, 2]"),
    (lambda: confusion_matrix([0, 1], [0, -1], 2),
     r"predictions must be class indices in [0, 2), got values in [-1, 0]"),
    (lambda: precision_recall_f1([1, 2]), r"confusion must be a 2-D integer array, got dtype int64 and shape (2,)"),
    (lambda: classification_report([0, 1], [0, 1], [2]),
     r"targets must be a 2-D integer array, got dtype int64 and shape (2,)"),
    (lambda: classification_report([[0]], [[0.5]], [2]),
     r"predictions must be a 2-D integer array, got dtype float64 and shape (1, 1)"),
    (lambda: classification_report(np.zeros((2, 1), int), np.zeros((3, 1), int), [2]),
     r"targets (2, 1) and predictions (3, 1) must have one shape"),
])
def test_bad_inputs_are_refused_with_a_message_naming_the_argument(call, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        call()


def test_a_known_confusion_matrix_as_json():
    # head0: true 0 0 0 1, predicted 0 1 0 1 -> confusion [[2, 1], [0, 1]]
    #   class 0: tp 2, predicted 2, support 3 -> P 1, R 2/3, F1 4/5; class 1: tp 1, predicted 2, support 1 -> 1/2, 1,
    #   2/3
    # head1: true 2 2 0 1, predicted 0 2 0 1 -> class 0: P 1/2 R 1 F1 2/3; class 1: 1, 1, 1; class 2: 1, 1/2, 2/3
    # every head right: rows 2 and 3 only (head1 misses row 0, head0 row 1)
    targets = torch.tensor([[0, 2], [0, 2], [0, 0], [1, 1]])
    predictions = torch.tensor([[0, 0], [1, 2], [0, 0], [1, 1]])
    report = classification_report(targets, predictions, [2, 3])
    approx = pytest.approx
    assert report.to_json() == {
        "count": 4, "frame_accuracy": 0.5,
        "heads": [
            {"name": "head0", "accuracy": 0.75, "macro_precision": 0.75, "macro_recall": approx(5 / 6),
             "macro_f1": approx((4 / 5 + 2 / 3) / 2), "weighted_f1": approx((3 * 4 / 5 + 2 / 3) / 4),
             "classes": {"0": {"precision": 1.0, "recall": approx(2 / 3), "f1": approx(4 / 5), "support": 3},
                         "1": {"precision": 0.5, "recall": 1.0, "f1": approx(2 / 3), "support": 1}},
             "confusion": [[2, 1], [0, 1]]},
            {"name": "head1", "accuracy": 0.75, "macro_precision": approx(5 / 6), "macro_recall": approx(5 / 6),
             "macro_f1": approx((2 / 3 + 1 + 2 / 3) / 3), "weighted_f1": approx((2 / 3 + 1 + 2 * 2 / 3) / 4),
             "classes": {"0": {"precision": 0.5, "recall": 1.0, "f1": approx(2 / 3), "support": 1},
                         "1": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
                         "2": {"precision": 1.0, "recall": 0.5, "f1": approx(2 / 3), "support": 2}},
             "confusion": [[1, 0, 0], [0, 1, 0], [1, 0, 1]]},
        ],
    }


def test_the_printed_table_of_a_known_report():
    # true 0 0 1, predicted 0 1 1; class 2 neither occurs nor is predicted: every value of it is undefined
    report = classification_report([[0], [0], [1]], [[0], [1], [1]], [3])
    assert format_report(report) == "\n".join([
        "head 'head0': accuracy 0.667, macro F1 0.667, weighted F1 0.667",
        "  class         support  precision  recall     F1",
        "  0                   2      1.000   0.500  0.667",
        "  1                   1      0.500   1.000  0.667",
        "  2                   0          -       -      -",
        "frame accuracy (every head right): 0.667 over 3 transitions",
    ])


def test_the_class_column_widens_to_the_longest_class_name():
    from rlir.envs.action_space import ActionHead, ActionSpace

    space = ActionSpace([ActionHead("action", ("noop", "make_stone_pickaxe"))])
    table = format_report(classification_report([[1]], [[1]], space)).splitlines()
    assert table[1:4] == ["  class               support  precision  recall     F1",
                          "  noop                      0          -       -      -",
                          "  make_stone_pickaxe        1      1.000   1.000  1.000"]


def test_no_samples_gives_nan_everywhere_without_a_warning():
    empty = np.zeros((0, 1), dtype=np.int64)
    report = classification_report(empty, empty, [2])
    head = report.heads[0]
    np.testing.assert_array_equal(head.confusion, [[0, 0], [0, 0]])
    values = [report.frame_accuracy, head.accuracy, head.macro_precision, head.macro_recall, head.macro_f1,
              head.weighted_f1, report.macro("f1"), *head.metrics.precision, *head.metrics.recall, *head.metrics.f1]
    assert all(math.isnan(v) for v in values)
    assert report.to_json()["frame_accuracy"] is None and report.to_json()["heads"][0]["macro_f1"] is None
    assert format_report(report).splitlines()[-1] == "frame accuracy (every head right):     - over 0 transitions"


def test_a_class_never_predicted_has_nan_precision_without_a_warning():
    m = precision_recall_f1(np.array([[3, 0], [2, 0]]))  # class 1 occurs twice, never predicted
    np.testing.assert_allclose(m.precision, [3 / 5, math.nan])
    np.testing.assert_allclose(m.recall, [1, 0])
    np.testing.assert_allclose(m.f1, [6 / 8, 0])


# ---- image --------------------------------------------------------------------------------------------------

def gaussian_weights(size: int, sigma: float) -> np.ndarray:
    """The 2-D window of Wang et al.: w[i, j] = g(i) g(j), g(i) = exp(-(i - (size - 1) / 2)^2 / (2 sigma^2)),
    normalised to sum 1."""
    g = np.array([math.exp(-((i - (size - 1) / 2) ** 2) / (2 * sigma * sigma)) for i in range(size)])
    g /= g.sum()
    return np.outer(g, g)


def ssim_by_hand(x: torch.Tensor, y: torch.Tensor, size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """SSIM per frame: at every valid window position of every channel, the Gaussian-weighted means, variances
    and covariance, then the mean of the SSIM map."""
    w = gaussian_weights(size, sigma)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    x, y = x.double().numpy(), y.double().numpy()
    n, c, h, wd = x.shape
    out = []
    for f in range(n):
        values = []
        for ch in range(c):
            for i in range(h - size + 1):
                for j in range(wd - size + 1):
                    a, b = x[f, ch, i:i + size, j:j + size], y[f, ch, i:i + size, j:j + size]
                    ma, mb = (w * a).sum(), (w * b).sum()
                    va, vb = (w * a * a).sum() - ma**2, (w * b * b).sum() - mb**2
                    cov = (w * a * b).sum() - ma * mb
                    values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
        out.append(np.mean(values))
    return np.array(out)


def noisy_pair(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    y = (x.double() + 60 * torch.randn(shape, generator=g)).clamp(0, 255).round().to(torch.uint8)
    return x, y


def test_ssim_of_frames_the_size_of_the_window_matches_the_hand_computation():
    x, y = noisy_pair((2, 3, 11, 11))  # one window position per channel: the default window fits exactly
    np.testing.assert_allclose(ssim(x, y).numpy(), ssim_by_hand(x, y), rtol=1e-12)


def test_ssim_averages_every_valid_window_position():
    x, y = noisy_pair((1, 2, 12, 14), seed=1)  # 2 x 4 positions
    np.testing.assert_allclose(ssim(x, y).numpy(), ssim_by_hand(x, y), rtol=1e-12)


def test_ssim_with_another_window_and_sigma():
    x, y = noisy_pair((1, 1, 5, 6), seed=2)
    np.testing.assert_allclose(ssim(x, y, window=3, sigma=0.8).numpy(), ssim_by_hand(x, y, 3, 0.8), rtol=1e-12)


@pytest.mark.parametrize("fn", [psnr, ssim])
def test_one_frame_that_is_not_uint8_is_refused(fn):
    x, _ = noisy_pair((1, 3, 11, 11))
    for a, b in ((x, x.to(torch.int16)), (x.float(), x)):
        with pytest.raises(ValueError, match=r"^original and reconstruction must be uint8 tensors of one shape"):
            fn(a, b)


def test_psnr_is_per_frame():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    y = x.clone()
    y[0] = 10  # frame 0: MSE 100; frame 1: exact
    expected = torch.tensor([10 * math.log10(255**2 / 100), 10 * math.log10(255**2 / 1e-10)], dtype=torch.float64)
    torch.testing.assert_close(psnr(x, y), expected)
