"""PSNR and SSIM of uint8 frames."""
import math

import pytest
import torch

from rlir.metrics.image import psnr, ssim


def frames(seed: int, n: int = 3, size: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_ssim_of_identical_frames_is_one():
    x = frames(0)
    torch.testing.assert_close(ssim(x, x), torch.ones(3, dtype=torch.float64))


def test_ssim_of_constant_frames_has_the_closed_form():
    # Constant frames have zero variance, so SSIM reduces to the luminance term (2ab + C1) / (a^2 + b^2 + C1).
    a, b = 100, 140
    x = torch.full((1, 3, 12, 12), a, dtype=torch.uint8)
    y = torch.full((1, 3, 12, 12), b, dtype=torch.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(x, y).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-12)


def test_ssim_is_symmetric_and_falls_with_noise():
    x = frames(1)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    scores = []
    for level in (2, 10, 40):
        y = (x.double() + level * noise).clamp(0, 255).round().to(torch.uint8)
        torch.testing.assert_close(ssim(x, y), ssim(y, x))
        scores.append(ssim(x, y).mean().item())
    assert 1 > scores[0] > scores[1] > scores[2] > 0


def test_psnr_matches_the_formula():
    x = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    y = torch.full((1, 3, 4, 4), 10, dtype=torch.uint8)
    assert psnr(x, y).item() == pytest.approx(10 * math.log10(255**2 / 100))


@pytest.mark.parametrize("fn", [psnr, ssim])
def test_bad_inputs_name_the_problem(fn):
    with pytest.raises(ValueError, match="uint8"):
        fn(frames(0).float(), frames(1).float())
    with pytest.raises(ValueError, match="shape"):
        fn(frames(0), frames(1, n=2))


def test_ssim_rejects_frames_smaller_than_the_window():
    with pytest.raises(ValueError, match="window"):
        ssim(frames(0, size=8), frames(1, size=8))
