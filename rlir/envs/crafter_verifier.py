"""A Crafter judge with no learned model in it: what a transition did, read with Crafter's own rules and textures.

Crafter draws a 9x7-tile world view (9 columns, 7 rows above two inventory rows) centred on the player, at
``size // 9`` px a tile. So in a real transition:
  - an unblocked move scrolls the world view by exactly one tile, away from the move; nothing else scrolls it;
  - the player's sprite turns to the commanded direction, even when the move is blocked;
  - a move is blocked unless the tile it walks into is grass, sand, path (or lava) with no creature on it.

``CrafterVerifier`` reads each of these from pixels. The scroll is the one-tile shift (or none) whose tiles of
frame t best explain frame t+1, over the world view less the player's tiles, with each tile's error clipped so a
walking cow cannot decide it; when the best shift does not beat the runner-up by ``tie_margin`` (flat grass, a
garbled frame) the call is a tie, and the headline metrics count a tie as a miss, so a model cannot score by
drawing frames too garbled to call. Tiles and the facing are the nearest of Crafter's textures, drawn as Crafter
draws them (creatures alpha-blended over the ground, dimmed by the frame's daylight), so the tile a move walks into
says whether it should scroll. Calibrated against Crafter's own state in ``rlir.eval.verify``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

VIEW_ROWS, VIEW_COLS = 7, 9  # world-view tiles; Crafter's 9x9 grid keeps its last two rows for the inventory
PLAYER = (3, 4)  # the player's tile (row, col)
MOVES = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}  # the player's step (rows, cols)
SCROLLS = ("none", *MOVES)  # a transition's call: how the player moved; TIE when no shift wins
TIE = -1
FACINGS = tuple(MOVES)
MATERIALS = ("water", "grass", "stone", "path", "sand", "tree", "lava", "coal", "iron", "diamond", "table", "furnace")
GROUND = ("grass", "sand", "path")  # what creatures stand on (Crafter's walkable materials)
PLAYER_WALKABLE = GROUND + ("lava",)  # the player may also walk into lava (and die)
CREATURES = ("cow", "zombie", "skeleton", "sapling", "plant", "plant-ripe", "plant-young", "fence",
             "arrow-left", "arrow-right", "arrow-up", "arrow-down")
OUTSIDE = "outside"  # beyond the map's edge Crafter leaves its canvas grey (127)
DAYLIGHT_LEVELS = np.linspace(0.0, 1.0, 11)
TILE_ERROR_CLIP = 40.0  # mean absolute error (0-255) above which a tile counts as simply not matching
CLEAR_TILE_GAP = 8.0  # a tile favours one shift over another when its error is lower by this (0-255), above codec noise
TIE_MARGIN = 2  # tiles: how many more tiles must clearly favour the winning shift than any other shift
UNKNOWN_TILE_ERROR = 45.0  # a tile farther than this (RMS, 0-255) from every texture is unknown


def _assets() -> Path:
    try:
        import crafter
    except ImportError as error:
        raise ImportError("the Crafter verifier needs the `crafter` package: pip install crafter") from error
    return Path(crafter.__file__).parent / "assets"


def _texture(name: str, unit: int) -> np.ndarray:
    """Crafter's texture ``name`` at ``unit`` px, [unit, unit, 4] RGBA (rows, cols), resized as Crafter does."""
    image = Image.open(_assets() / f"{name}.png").convert("RGBA").resize((unit, unit), resample=Image.NEAREST)
    return np.asarray(image, dtype=np.float32)


def _over(creature: np.ndarray, ground: np.ndarray) -> np.ndarray:
    alpha = creature[..., 3:] / 255.0
    return alpha * creature[..., :3] + (1 - alpha) * ground[..., :3]


def _lit(rgb: np.ndarray, daylight: float) -> np.ndarray:
    """A tile as Crafter shows it at ``daylight``: blended toward a desaturated blue night (its noise left out)."""
    desaturated = np.asarray(ImageEnhance.Color(Image.fromarray(rgb.astype(np.uint8))).enhance(0.4), np.float32)
    night = 0.5 * desaturated + 0.5 * np.array([0.0, 16.0, 64.0], np.float32)
    return daylight * rgb + (1 - daylight) * night


@functools.lru_cache(maxsize=4)
def _templates(unit: int) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """(tile class names, tile templates [levels, classes, unit*unit*3], facing templates [levels, 4 * grounds, ...])."""
    names, tiles = [], []
    for material in MATERIALS:
        names.append(material)
        tiles.append(_texture(material, unit)[..., :3])
    for creature in CREATURES:
        for ground in GROUND:
            names.append(creature)
            tiles.append(_over(_texture(creature, unit), _texture(ground, unit)))
    names.append(OUTSIDE)
    tiles.append(np.full((unit, unit, 3), 127.0, np.float32))
    players = [_over(_texture(f"player-{facing}", unit), _texture(ground, unit))
               for facing in FACINGS for ground in GROUND]
    lit = lambda images: np.stack([np.stack([_lit(i, d).reshape(-1) for i in images]) for d in DAYLIGHT_LEVELS])
    return tuple(names), lit(tiles), lit(players)


def _nearest(tiles: np.ndarray, templates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances' argmin and min of tiles [M, D] to templates [K, D]."""
    d2 = (tiles ** 2).sum(-1, keepdims=True) - 2 * tiles @ templates.T + (templates ** 2).sum(-1)
    return d2.argmin(-1), np.maximum(d2.min(-1), 0.0)


@dataclass
class Transitions:
    """The verifier's calls for N transitions (frame t -> t+1); every field is an array of N."""

    scroll: np.ndarray  # index into SCROLLS of how the player moved, or TIE
    evidence: np.ndarray  # the winning shift's least lead, in tiles, over another shift (see CrafterVerifier.scroll)
    facing: np.ndarray  # index into FACINGS of the sprite in frame t+1, or -1 when no player sprite is found
    walkable: np.ndarray  # per move direction [N, 4]: 1 if the tile it walks into in frame t takes the player,
    #                       0 if it blocks, -1 when the tile is unknown
    after_tiles: np.ndarray  # [N, 7, 9] index into tile_names of each world tile of frame t+1, -1 unknown


class CrafterVerifier:
    """Reads Crafter frames ([..., H, W, 3] uint8 RGB, H = W = 9 * unit) with Crafter's rules and textures."""

    def __init__(self, frame_size: int = 72, tie_margin: int = TIE_MARGIN):
        if isinstance(frame_size, bool) or not isinstance(frame_size, int) or frame_size < 9 or frame_size % 9:
            raise ValueError(f"frame_size must be a multiple of 9 (Crafter's 9-tile grid, one tile per "
                             f"frame_size // 9 px), got {frame_size!r}")
        self.frame_size = frame_size
        self.unit = frame_size // 9
        self.tie_margin = int(tie_margin)
        self.tile_names, self._tile_templates, self._player_templates = _templates(self.unit)

    def tiles(self, frames: np.ndarray) -> np.ndarray:
        """[N, 7, 9, unit * unit * 3] float32 world-view tiles of frames [N, H, W, 3]."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[1:] != (self.frame_size, self.frame_size, 3):
            raise ValueError(f"frames must be [N, {self.frame_size}, {self.frame_size}, 3] RGB, got "
                             f"{list(frames.shape)}")
        u = self.unit
        view = frames[:, :VIEW_ROWS * u].astype(np.float32)
        n = len(view)
        return view.reshape(n, VIEW_ROWS, u, VIEW_COLS, u, 3).transpose(0, 1, 3, 2, 4, 5).reshape(
            n, VIEW_ROWS, VIEW_COLS, u * u * 3)

    def daylight(self, tiles: np.ndarray) -> np.ndarray:
        """Index into DAYLIGHT_LEVELS of each frame's light: the level whose textures fit its tiles best."""
        n = len(tiles)
        flat = tiles.reshape(n * VIEW_ROWS * VIEW_COLS, -1)
        fits = np.stack([_nearest(flat, level)[1].reshape(n, -1).sum(-1) for level in self._tile_templates], -1)
        return fits.argmin(-1)

    def classify(self, tiles: np.ndarray, daylight: np.ndarray | None = None) -> np.ndarray:
        """Index into ``tile_names`` of each tile [N, 7, 9], -1 where no texture is near (a garbled tile)."""
        daylight = self.daylight(tiles) if daylight is None else daylight
        classes = np.full(tiles.shape[:3], -1, np.int64)
        for level in np.unique(daylight):
            rows = daylight == level
            flat = tiles[rows].reshape(-1, tiles.shape[-1])
            index, d2 = _nearest(flat, self._tile_templates[level])
            dim = tiles.shape[-1]
            index[np.sqrt(d2 / dim) > UNKNOWN_TILE_ERROR] = -1
            classes[rows] = index.reshape(-1, VIEW_ROWS, VIEW_COLS)
        return classes

    def facing(self, tiles: np.ndarray, daylight: np.ndarray) -> np.ndarray:
        """Index into FACINGS of the player's sprite in each frame, -1 where the player's tile is no sprite."""
        player = tiles[:, PLAYER[0], PLAYER[1]]
        out = np.full(len(tiles), -1, np.int64)
        for level in np.unique(daylight):
            rows = daylight == level
            index, d2 = _nearest(player[rows], self._player_templates[level])
            index = index // len(GROUND)
            index[np.sqrt(d2 / player.shape[-1]) > UNKNOWN_TILE_ERROR] = -1
            out[rows] = index
        return out

    def scroll(self, before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(call, evidence) for tiles [N, 7, 9, D] of frames t and t+1: the index into SCROLLS of the shift that
        best explains frame t+1, or TIE. A shift wins when, against every other shift, at least ``tie_margin`` more
        tiles (seen by both) clearly favour it than favour the other; ``evidence`` is that least lead in tiles.
        Counting tiles rather than averaging errors keeps one tree in a grass field decisive and flat grass a tie."""
        errors = np.stack([self._shift_errors(before, after, step) for step in ((0, 0), *MOVES.values())], 1)
        mean = np.nanmean(errors, axis=(2, 3))
        winner = mean.argmin(-1)
        won = np.take_along_axis(errors, winner[:, None, None, None], 1)
        lead = np.nansum(errors - won > CLEAR_TILE_GAP, axis=(2, 3)) - np.nansum(won - errors > CLEAR_TILE_GAP,
                                                                                  axis=(2, 3))
        lead[np.arange(len(winner)), winner] = np.iinfo(lead.dtype).max
        evidence = lead.min(-1)
        return np.where(evidence >= self.tie_margin, winner, TIE), evidence

    @staticmethod
    def _shift_errors(before: np.ndarray, after: np.ndarray, step: tuple[int, int]) -> np.ndarray:
        """[N, 7, 9] clipped error of each tile of frame t+1 against frame t moved by the player's ``step``
        (after[r, c] against before[r + dr, c + dc]); NaN where there is no such tile or it holds the player."""
        dr, dc = step
        rows = slice(max(0, -dr), VIEW_ROWS - max(0, dr))
        cols = slice(max(0, -dc), VIEW_COLS - max(0, dc))
        moved = before[:, max(0, dr):VIEW_ROWS + min(0, dr), max(0, dc):VIEW_COLS + min(0, dc)]
        errors = np.full(after.shape[:3], np.nan, np.float32)
        errors[:, rows, cols] = np.minimum(np.abs(after[:, rows, cols] - moved).mean(-1), TILE_ERROR_CLIP)
        errors[:, PLAYER[0], PLAYER[1]] = np.nan  # the player in frame t+1
        errors[:, PLAYER[0] - dr, PLAYER[1] - dc] = np.nan  # where frame t's player lands
        return errors

    def transitions(self, before: np.ndarray, after: np.ndarray) -> Transitions:
        """The calls for frames t [N, H, W, 3] and t+1 [N, H, W, 3]."""
        tiles_before, tiles_after = self.tiles(before), self.tiles(after)
        call, evidence = self.scroll(tiles_before, tiles_after)
        light_before = self.daylight(tiles_before)
        classes = self.classify(tiles_before, light_before)
        walkable = np.full((len(call), len(MOVES)), -1, np.int64)
        for k, (dr, dc) in enumerate(MOVES.values()):
            target = classes[:, PLAYER[0] + dr, PLAYER[1] + dc]
            known = target >= 0
            names = np.array(self.tile_names, dtype=object)[np.where(known, target, 0)]
            walkable[:, k] = np.where(known, np.isin(names, PLAYER_WALKABLE).astype(np.int64), -1)
        light_after = self.daylight(tiles_after)
        facing = self.facing(tiles_after, light_after)
        return Transitions(scroll=call, evidence=evidence, facing=facing, walkable=walkable,
                           after_tiles=self.classify(tiles_after, light_after))


MOVE_ACTIONS = tuple(f"move_{direction}" for direction in MOVES)


class VideoJudge:
    """The verifier applied to videos with their commanded actions, for one Crafter action space.

    ``hits`` gives per transition [K, n] what the metrics count (``rlir.eval.verify``): is_move, decided,
    scrolled_as_commanded, still (no scroll called; a tie counts as still), faces_move, as_rules_say (a move did
    what the tile it walks into says: scroll if it takes the player, stay if it blocks) and content (share of
    world tiles of frame t+1 that are not grass).
    """

    def __init__(self, action_space):
        classes = action_space.heads[0].classes
        self._moves = np.array([MOVE_ACTIONS.index(c) if c in MOVE_ACTIONS else -1 for c in classes])

    @staticmethod
    def for_action_space(action_space) -> "VideoJudge | None":
        """A judge for one head with Crafter's move actions, else None (another game)."""
        if action_space.num_heads != 1 or not set(MOVE_ACTIONS) <= set(action_space.heads[0].classes):
            return None
        return VideoJudge(action_space)

    def move_indices(self, actions: np.ndarray) -> np.ndarray:
        """Index into MOVES of each commanded action [...] of the one head, -1 for a non-move."""
        return self._moves[actions]

    def hits(self, videos, actions) -> dict:
        """uint8 videos [K, n + 1, 3, H, W] (torch or numpy) and actions [K, n, 1] -> {name: [K, n] array}."""
        frames = np.asarray(videos.cpu() if hasattr(videos, "cpu") else videos).transpose(0, 1, 3, 4, 2)
        moves = self.move_indices(np.asarray(actions.cpu() if hasattr(actions, "cpu") else actions)[..., 0])
        return score_transitions(CrafterVerifier(frames.shape[2]), frames, moves)


def score_transitions(verifier: CrafterVerifier, frames: np.ndarray, moves: np.ndarray) -> dict:
    """Per-transition hits [K, n] (see ``VideoJudge``) of uint8 frames [K, n + 1, H, W, 3], moves [K, n]."""
    k, n = moves.shape
    before = frames[:, :-1].reshape(k * n, *frames.shape[2:])
    after = frames[:, 1:].reshape(k * n, *frames.shape[2:])
    calls = verifier.transitions(before, after)
    move = moves.reshape(-1)
    is_move = move >= 0
    step = np.where(is_move, move, 0)
    commanded = SCROLLS.index("left") + step  # SCROLLS is ("none", *MOVES)
    walkable = calls.walkable[np.arange(len(move)), step]
    expected = np.where(walkable == 1, commanded, SCROLLS.index("none"))
    grass = verifier.tile_names.index("grass")
    shape = lambda a: a.reshape(k, n)
    return {
        "is_move": shape(is_move),
        "decided": shape(calls.scroll != TIE),
        "scrolled_as_commanded": shape(calls.scroll == commanded),
        "still": shape((calls.scroll == SCROLLS.index("none")) | (calls.scroll == TIE)),
        "faces_move": shape(calls.facing == step),
        "as_rules_say": shape((calls.scroll == expected) & (walkable >= 0)),
        "content": shape((calls.after_tiles != grass).mean(axis=(1, 2))),
    }
