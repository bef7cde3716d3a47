import pytest

from rlir.data import record


@pytest.fixture(scope="module")
def tiny_recording(tmp_path_factory):
    """A 2-episode, 30-step Crafter recording (one per test module: some tests write caches beside it)."""
    out = tmp_path_factory.mktemp("crafter")
    return record("crafter", out, episodes=2, steps=30, seed=0, progress=False).root
