"""Prompts validates at the public boundary with one-line messages that name the field and what it got
(docs/mutation.md: these kill the mutants of Prompts.__post_init__, to and rows)."""
import re

import pytest
import torch

from rlir.policies import Prompts


def _context(b=2, c=1, h=4, w=6):
    return torch.zeros(b, c, 3, h, w, dtype=torch.uint8)


def _actions(b=2, n=3, heads=1):
    return torch.zeros(b, n, heads, dtype=torch.long)


CONTEXT_MSG = "Prompts.context must be uint8 [B, C, 3, h, w], got {}"


@pytest.mark.parametrize("context, got", [
    (torch.zeros(2, 1, 3, 4, 6), "torch.float32 (2, 1, 3, 4, 6)"),                  # wrong dtype
    (torch.zeros(2, 3, 4, 6, dtype=torch.uint8), "torch.uint8 (2, 3, 4, 6)"),       # 4-d
    (torch.zeros(2, 1, 4, 4, 6, dtype=torch.uint8), "torch.uint8 (2, 1, 4, 4, 6)"),  # 4 channels
    ([[0]], "list ()"),                                                             # not a tensor
])
def test_context_errors_name_what_they_got(context, got):
    with pytest.raises(ValueError, match=f"^{re.escape(CONTEXT_MSG.format(got))}$"):
        Prompts(context, _actions())


@pytest.mark.parametrize("actions, got", [
    (torch.zeros(2, 3, dtype=torch.long), "(2, 3)"),            # 2-d
    (torch.zeros(3, 3, 1, dtype=torch.long), "(3, 3, 1)"),      # batch differs from the context's
    (torch.zeros(2, 3, 1), "(2, 3, 1)"),                        # floating point
    ("move_left", "()"),                                        # not a tensor
])
def test_actions_errors_name_the_batch_and_what_they_got(actions, got):
    with pytest.raises(ValueError, match=f"^{re.escape(f'Prompts.actions must be integer [B=2, n, H], got {got}')}$"):
        Prompts(_context(), actions)


@pytest.mark.parametrize("context_actions", [None, torch.zeros(2, 2, 1, dtype=torch.long),
                                             torch.zeros(2, 1, 2, dtype=torch.long)])
def test_several_context_frames_need_their_actions(context_actions):
    # C = 2 context frames, so neither "C > 2" nor the 3 colour channels can stand in for C.
    msg = "Prompts.context_actions must be [B, C-1, H] = (2, 1, 1) with C = 2 context frames"
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        Prompts(_context(c=2), _actions(), context_actions)


def test_valid_prompts_of_one_and_several_context_frames():
    one = Prompts(_context(), _actions())
    assert len(one) == 2 and one.n_frames == 3 and one.context_actions is None
    ca = torch.ones(2, 2, 1, dtype=torch.long)
    several = Prompts(_context(c=3), _actions(), ca)
    assert several.context_actions is ca


@pytest.mark.parametrize("with_context_actions", [False, True])
def test_to_moves_every_tensor_and_keeps_the_values(with_context_actions):
    ca = torch.arange(4).reshape(2, 2, 1) if with_context_actions else None
    prompts = Prompts(torch.randint(0, 255, (2, 3 if ca is not None else 1, 3, 4, 6), dtype=torch.uint8),
                      torch.arange(6).reshape(2, 3, 1), ca)
    moved = prompts.to(torch.device("meta"))
    assert moved.context.device.type == moved.actions.device.type == "meta"
    assert moved.context.shape == prompts.context.shape and moved.actions.shape == prompts.actions.shape
    if ca is None:
        assert moved.context_actions is None
    else:
        assert moved.context_actions.device.type == "meta" and moved.context_actions.shape == ca.shape
    same = prompts.to("cpu")
    assert torch.equal(same.context, prompts.context) and torch.equal(same.actions, prompts.actions)
    if ca is not None:
        assert torch.equal(same.context_actions, ca)


def test_rows_slice_every_field():
    ca = torch.arange(8).reshape(4, 2, 1)
    prompts = Prompts(torch.arange(4 * 3 * 3 * 2 * 2, dtype=torch.uint8).reshape(4, 3, 3, 2, 2),
                      torch.arange(12).reshape(4, 3, 1), ca)
    part = prompts.rows(1, 3)
    assert torch.equal(part.context, prompts.context[1:3]) and torch.equal(part.actions, prompts.actions[1:3])
    assert torch.equal(part.context_actions, ca[1:3])
    plain = Prompts(prompts.context[:, :1], prompts.actions).rows(2, 4)
    assert plain.context_actions is None and len(plain) == 2
