"""The Minecraft (VPT / MineWorld) action space, for recordings of real Minecraft play.

Nine heads, one per action group: three 3-way movement groups, four buttons and the camera
(pitch and yaw, each binned by VPT's mu-law quantiser). Recordings hold per-head class indices;
``heads_from_minerl_action`` converts a MineRL / VPT env action dict to them.
"""
from __future__ import annotations

from typing import Any, Mapping

from rlir.envs.action_space import ActionHead, ActionSpace
from rlir.envs.mulaw import MuLawQuantizer

CAMERA_QUANTIZER = MuLawQuantizer(max_degrees=10.0, bins=11, mu=10.0)
BUTTONS = ("use", "attack", "jump", "drop")
BUTTON_CLASSES = ("off", "on")
# (head name, class 1 key, class 2 key): class 0 is "none" (neither key pressed).
MOVEMENT_GROUPS = (
    ("forward_back", "forward", "back"),
    ("left_right", "left", "right"),
    ("sprint_sneak", "sprint", "sneak"),
)


def minecraft_action_space() -> ActionSpace:
    camera_classes = [f"{degrees:+.2f}" for degrees in CAMERA_QUANTIZER.centres()]
    heads = [ActionHead(name, ["none", first, second]) for name, first, second in MOVEMENT_GROUPS]
    heads += [ActionHead(button, BUTTON_CLASSES) for button in BUTTONS]
    heads += [ActionHead("camera_pitch", camera_classes), ActionHead("camera_yaw", camera_classes)]
    return ActionSpace(heads)


def heads_from_minerl_action(action: Mapping[str, Any]) -> dict[str, int]:
    """MineRL/VPT env action ({"forward": 1, ..., "camera": [pitch, yaw]}) -> per-head class indices.

    Keys that are absent count as released; other keys (inventory, hotbar, ESC, ...) are ignored.
    Opposite keys pressed together cancel (forward+back -> none), as they do in game, except
    sprint+sneak -> sneak, because sneaking stops sprinting in Minecraft.
    """
    def pressed(key: str) -> bool:
        return bool(action.get(key, 0))

    heads: dict[str, int] = {}
    for name, first, second in MOVEMENT_GROUPS:
        if pressed(first) and pressed(second):
            heads[name] = 2 if name == "sprint_sneak" else 0
        else:
            heads[name] = 1 if pressed(first) else 2 if pressed(second) else 0
    for button in BUTTONS:
        heads[button] = int(pressed(button))
    camera = action.get("camera", (0.0, 0.0))
    if len(camera) != 2:
        raise ValueError(f'action["camera"] must be [pitch, yaw] in degrees, got {camera!r}')
    heads["camera_pitch"] = CAMERA_QUANTIZER.encode(float(camera[0]))
    heads["camera_yaw"] = CAMERA_QUANTIZER.encode(float(camera[1]))
    return heads
