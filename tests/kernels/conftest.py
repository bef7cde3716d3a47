import os

import pytest

from rlir.kernels._common import HAS_TRITON


@pytest.fixture(params=["torch", "triton"])
def backend(request, monkeypatch):
    """Runs a test on the PyTorch reference path and on the Triton path (interpreted on CPU tensors).

    On a GPU machine the interpreter is off (the compiled kernels are tested by the gpu-marked tests on
    CUDA tensors), so the Triton cases on CPU tensors are skipped there."""
    if request.param == "triton" and (not HAS_TRITON or os.environ.get("TRITON_INTERPRET") != "1"):
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1 (GPU machines run the gpu-marked tests)")
    monkeypatch.setenv("RLIR_KERNELS", request.param)
    return request.param
