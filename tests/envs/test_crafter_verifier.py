"""The Crafter verifier on hand-built transitions: a real frame shifted one tile each way, and an unshifted frame
whose sprite alone turned."""
import numpy as np
import pytest

from rlir.envs.crafter import CrafterEnv
from rlir.envs.crafter_verifier import (FACINGS, MOVES, PLAYER, SCROLLS, TIE, CrafterVerifier, _over, _texture)

pytest.importorskip("crafter")
U = 8  # px a tile at 72x72


def _busy_frame() -> np.ndarray:
    """A real 72x72 Crafter frame with trees, water or stone in view (so every shift is decidable)."""
    env = CrafterEnv(seed=11, size=72)
    frame = env.reset()
    verifier = CrafterVerifier(72)
    for _ in range(60):
        classes = verifier.classify(verifier.tiles(frame[None]))
        if (classes != verifier.tile_names.index("grass")).sum() >= 12:
            return frame
        frame, _ = env.step({"action": 2})  # move_right until the view is busy
    raise AssertionError("no busy frame found")


def _tile(frame, row, col):
    return frame[row * U:(row + 1) * U, col * U:(col + 1) * U]


def _with_player(frame: np.ndarray, facing: str) -> np.ndarray:
    out = frame.copy()
    sprite = _over(_texture(f"player-{facing}", U), _texture("grass", U))
    out[PLAYER[0] * U:(PLAYER[0] + 1) * U, PLAYER[1] * U:(PLAYER[1] + 1) * U] = sprite.round().astype(np.uint8)
    return out


def _moved(frame: np.ndarray, direction: str) -> np.ndarray:
    """The frame after the player stepped ``direction``: world tiles shifted one tile (the revealed edge grass),
    the player redrawn facing the move."""
    dr, dc = MOVES[direction]
    out = frame.copy()
    grass = _texture("grass", U)[..., :3].astype(np.uint8)
    for r in range(7):
        for c in range(9):
            sr, sc = r + dr, c + dc
            out[r * U:(r + 1) * U, c * U:(c + 1) * U] = _tile(frame, sr, sc) if 0 <= sr < 7 and 0 <= sc < 9 else grass
    return _with_player(out, direction)


@pytest.mark.parametrize("direction", list(MOVES))
def test_a_one_tile_shift_reads_as_that_move_with_its_facing(direction):
    frame = _with_player(_busy_frame(), "down")
    calls = CrafterVerifier(72).transitions(frame[None], _moved(frame, direction)[None])
    assert SCROLLS[calls.scroll[0]] == direction
    assert FACINGS[calls.facing[0]] == direction


@pytest.mark.parametrize("facing", list(FACINGS))
def test_an_unshifted_frame_with_a_turned_sprite_reads_as_still_and_turned(facing):
    frame = _with_player(_busy_frame(), "down")
    calls = CrafterVerifier(72).transitions(frame[None], _with_player(frame, facing)[None])
    assert SCROLLS[calls.scroll[0]] == "none"
    assert FACINGS[calls.facing[0]] == facing


def test_flat_grass_is_a_tie_not_a_guess():
    grass = np.tile(_texture("grass", U)[..., :3].astype(np.uint8), (9, 9, 1))
    frame = _with_player(grass, "left")
    calls = CrafterVerifier(72).transitions(frame[None], _moved(frame, "left")[None])
    assert calls.scroll[0] == TIE


def test_noise_is_a_tie_not_a_move():
    rng = np.random.default_rng(0)
    before, after = rng.integers(0, 256, (2, 1, 72, 72, 3), dtype=np.uint8)
    calls = CrafterVerifier(72).transitions(before, after)
    assert calls.scroll[0] == TIE
    assert calls.facing[0] == -1


def test_the_tile_a_move_walks_into_says_whether_it_is_blocked():
    frame = _with_player(np.tile(_texture("grass", U)[..., :3].astype(np.uint8), (9, 9, 1)), "down")
    tree = _texture("tree", U)[..., :3].astype(np.uint8)
    frame[PLAYER[0] * U:(PLAYER[0] + 1) * U, (PLAYER[1] - 1) * U:PLAYER[1] * U] = tree  # a tree to the left
    calls = CrafterVerifier(72).transitions(frame[None], frame[None])
    assert calls.walkable[0].tolist() == [0, 1, 1, 1]  # left blocked; right, up, down free


def test_a_frame_size_off_crafters_grid_is_refused():
    with pytest.raises(ValueError, match="frame_size must be a multiple of 9"):
        CrafterVerifier(64)
