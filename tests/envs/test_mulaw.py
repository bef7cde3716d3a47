import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlir.envs import CAMERA_QUANTIZER, MuLawQuantizer


def test_vpt_camera_bins_are_symmetric_and_span_the_range():
    centres = CAMERA_QUANTIZER.centres()
    assert len(centres) == 11
    assert centres[0] == -10.0 and centres[5] == 0.0 and centres[-1] == 10.0
    np.testing.assert_allclose(centres, -centres[::-1])
    np.testing.assert_allclose(centres[6:], [0.6154, 1.6095, 3.2154, 5.8095, 10.0], atol=1e-4)


@pytest.mark.parametrize("quantizer", [CAMERA_QUANTIZER, MuLawQuantizer(max_degrees=180.0, bins=21, mu=5.0)])
def test_decode_of_encode_returns_bin_centres_exactly(quantizer):
    centres = quantizer.centres()
    assert np.array_equal(quantizer.encode(centres), np.arange(quantizer.bins))
    assert np.array_equal(quantizer.decode(quantizer.encode(centres)), centres)
    for index, centre in enumerate(centres):
        assert quantizer.encode(float(centre)) == index
        assert quantizer.decode(quantizer.encode(float(centre))) == centre


@given(st.floats(-50, 50), st.floats(-50, 50))
def test_encode_is_monotone(a, b):
    low, high = min(a, b), max(a, b)
    assert CAMERA_QUANTIZER.encode(low) <= CAMERA_QUANTIZER.encode(high)


def test_encode_clips_to_the_end_bins_and_handles_arrays():
    assert CAMERA_QUANTIZER.encode(-90.0) == 0
    assert CAMERA_QUANTIZER.encode(90.0) == 10
    assert CAMERA_QUANTIZER.encode(0.0) == 5
    encoded = CAMERA_QUANTIZER.encode(np.array([[-90.0, 0.0], [0.1, 90.0]]))
    assert encoded.dtype == np.int64 and encoded.shape == (2, 2)


def test_bad_arguments_raise_value_errors_naming_them():
    with pytest.raises(ValueError, match="bins"):
        MuLawQuantizer(bins=1)
    with pytest.raises(ValueError, match="max_degrees"):
        MuLawQuantizer(max_degrees=0)
    with pytest.raises(ValueError, match=r"\[0, 11\)"):
        CAMERA_QUANTIZER.decode(11)
    with pytest.raises(ValueError, match="integer"):
        CAMERA_QUANTIZER.decode(1.5)
