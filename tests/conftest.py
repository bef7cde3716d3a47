import importlib.util
import os
import sys
from pathlib import Path

import torch

# The Triton kernels run on CPU through the interpreter; it must be on before triton.jit runs.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def _import_hugging_faces_kernels_package_first() -> None:
    """transformers (TRL's dependency) imports Hugging Face's `kernels` package. `python -m pytest` puts the
    repository root first on sys.path, where our kernels/ folder (installed as rlir.kernels, never as a top-level
    package) would shadow it; importing theirs now, without the root, makes `kernels` name theirs."""
    root = Path(__file__).resolve().parents[1]
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != root]
    try:
        importlib.import_module("kernels")
    except ImportError:
        pass  # not installed: nothing to shadow
    finally:
        sys.path[:] = saved


_import_hugging_faces_kernels_package_first()


def interpreting() -> bool:
    """Triton kernels can run on CPU tensors: triton is installed and its interpreter is on (machines without
    CUDA; GPU machines test the compiled kernels on CUDA tensors instead)."""
    return os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton") is not None


def pytest_collection_modifyitems(config, items):
    # The shipped checkpoints' README numbers take minutes: only when -m names the marker (`pytest -m shipped`).
    if "shipped" not in (config.getoption("markexpr") or ""):
        deselected = [item for item in items if "shipped" in item.keywords]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if "shipped" not in item.keywords]
    can_interpret = interpreting()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_interp = pytest.mark.skip(reason="runs Triton on CPU tensors: needs triton and TRITON_INTERPRET=1")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "interpreter" in item.keywords and not can_interpret:
            item.add_marker(skip_interp)


@pytest.fixture
def one_thread():
    """torch on one thread for the test (2 shared cores: more threads only contend), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["torch", "triton"])
def backend(request, monkeypatch):
    """Runs a kernel test on the PyTorch reference path and on the Triton path (interpreted on CPU tensors).

    On a GPU machine the interpreter is off (the compiled kernels are tested by the gpu-marked tests on
    CUDA tensors), so the Triton cases on CPU tensors are skipped there."""
    if request.param == "triton" and not interpreting():
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1 (GPU machines run the gpu-marked tests)")
    monkeypatch.setenv("RLIR_KERNELS", request.param)
    return request.param


@pytest.fixture(scope="session")
def crafter_recording(tmp_path_factory):
    """A tiny recording of the real Crafter game (2 episodes of 12 steps, seed 3), for the tests that run the
    shipped checkpoints end to end."""
    from rlir.data import record

    data = tmp_path_factory.mktemp("crafter") / "rec"
    record("crafter", data, episodes=2, steps=12, seed=3, progress=False)
    return data
