"""rlir.policies sits below training, evaluation and pretraining: it imports none of them, and evaluation and
pretraining reach the policies without importing the training package."""
import json
import subprocess
import sys

import pytest

ABOVE = ("rlir.grpo", "rlir.eval", "rlir.pretrain")


def imported_after(*modules: str) -> list:
    """The rlir.grpo / rlir.eval / rlir.pretrain modules a fresh interpreter holds after importing ``modules``."""
    code = (f"import json, sys\nfor m in {list(modules)!r}: __import__(m)\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({ABOVE!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_the_policies_import_nothing_above_them():
    assert imported_after("rlir.policies") == []


@pytest.mark.parametrize("module", ["rlir.eval.action_following", "rlir.pretrain.world_model_eval",
                                    "rlir.pretrain.world_model", "rlir.pretrain.diffusion_world_model"])
def test_evaluation_and_pretraining_generate_without_the_training_package(module):
    assert not [m for m in imported_after(module) if m.startswith("rlir.grpo")]
