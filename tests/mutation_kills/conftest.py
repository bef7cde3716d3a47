import os

import pytest

from rlir.kernels._common import HAS_TRITON


@pytest.fixture(params=["torch", "triton"])
def backend(request, monkeypatch):
    """The PyTorch path and the Triton path (interpreted on CPU tensors), as in tests/kernels/conftest.py."""
    if request.param == "triton" and (not HAS_TRITON or os.environ.get("TRITON_INTERPRET") != "1"):
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1 (GPU machines run the gpu-marked tests)")
    monkeypatch.setenv("RLIR_KERNELS", request.param)
    return request.param
