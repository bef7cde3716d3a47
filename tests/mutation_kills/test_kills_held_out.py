"""Cases that kill mutants of rlir/grpo/held_out.py which tests/grpo/test_held_out.py and test_verifier_eval.py let
through (docs/mutation.md): the verifier's shares from hand-counted hits, a share with nothing to count, and a
rank without prompts handing the all-reduce the same six float64 sums as the others."""
import math

import numpy as np
import pytest
import torch

from rlir.grpo.held_out import _verifier_means
from rlir.parallel import Parallel


class Judge:
    """A verifier whose hits are given: one entry per generated frame."""

    def __init__(self, **hits):
        self.hits_given = {k: np.array(v, dtype=bool) for k, v in hits.items()}

    def hits(self, frames, actions):
        return self.hits_given


class SumWithOtherRank:
    """One rank of two; the other rank's sums are ``other``. Records what this rank hands the all-reduce."""

    rank, world_size, distributed = 1, 2, True

    def __init__(self, other):
        self.other, self.handed = torch.tensor(other, dtype=torch.float64), []

    def all_reduce(self, t):
        self.handed.append(t)
        return t + self.other


FRAMES, ACTIONS = torch.zeros(1, 5, 3, 2, 2, dtype=torch.uint8), torch.zeros(1, 4, 1, dtype=torch.long)


def test_the_shares_are_hits_over_counts_of_moves_and_of_still_frames():
    judge = Judge(is_move=[1, 1, 1, 0, 0, 0], scrolled_as_commanded=[1, 0, 1, 1, 0, 0], still=[0, 0, 0, 1, 0, 0],
                  content=[1, 1, 0, 0, 0, 1])
    m = _verifier_means(judge, FRAMES, ACTIONS, Parallel(), torch.device("cpu"))
    assert m == {"verifier/scroll_fidelity": 2 / 3, "verifier/stillness": 1 / 3, "verifier/content": 3 / 6}


def test_a_share_with_nothing_to_count_is_nan():
    judge = Judge(is_move=[1, 1], scrolled_as_commanded=[1, 0], still=[0, 0], content=[1, 0])
    m = _verifier_means(judge, FRAMES, ACTIONS, Parallel(), torch.device("cpu"))
    assert m["verifier/scroll_fidelity"] == 0.5 and math.isnan(m["verifier/stillness"])


@pytest.mark.parametrize("frames", [FRAMES, FRAMES[:0]], ids=["with prompts", "without prompts"])
def test_every_rank_hands_the_all_reduce_six_float64_sums(frames):
    judge = Judge(is_move=[1, 0], scrolled_as_commanded=[1, 0], still=[0, 1], content=[1, 1])
    parallel = SumWithOtherRank([1.0, 2.0, 1.0, 2.0, 3.0, 4.0])
    m = _verifier_means(judge, frames, ACTIONS, parallel, torch.device("cpu"))
    (handed,) = parallel.handed
    assert handed.dtype == torch.float64 and handed.shape == (6,)
    if len(frames):
        assert m == {"verifier/scroll_fidelity": 2 / 3, "verifier/stillness": 2 / 3, "verifier/content": 5 / 6}
    else:
        assert m == {"verifier/scroll_fidelity": 1 / 2, "verifier/stillness": 1 / 2, "verifier/content": 3 / 4}
