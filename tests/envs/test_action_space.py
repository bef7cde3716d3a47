import json

import numpy as np
import pytest

from rlir.envs import ActionHead, ActionSpace, get_action_space, heads_from_minerl_action


def test_crafter_space_is_one_head_of_crafters_17_actions():
    import crafter

    space = get_action_space("crafter")
    assert space.num_heads == 1 and space.head_sizes == [17]
    assert list(space.heads[0].classes) == list(crafter.constants.actions)


def test_minecraft_space_has_the_vpt_action_groups():
    space = get_action_space("minecraft")
    assert space.head_names == [
        "forward_back", "left_right", "sprint_sneak", "use", "attack", "jump", "drop", "camera_pitch", "camera_yaw",
    ]
    assert space.head_sizes == [3, 3, 3, 2, 2, 2, 2, 11, 11]


@pytest.mark.parametrize("name", ["crafter", "minecraft"])
def test_json_round_trip(name):
    space = get_action_space(name)
    assert ActionSpace.from_json(json.loads(json.dumps(space.to_json()))) == space


def test_from_json_ignores_extra_keys():
    data = {"heads": [{"name": "a", "classes": ["x", "y"], "note": 1}], "version": 3}
    assert ActionSpace.from_json(data) == ActionSpace([ActionHead("a", ["x", "y"])])


def test_encode_decode_round_trip():
    space = get_action_space("minecraft")
    action = {name: size - 1 for name, size in zip(space.head_names, space.head_sizes)}
    vector = space.encode(action)
    assert vector.dtype == np.int64 and vector.tolist() == [2, 2, 2, 1, 1, 1, 1, 10, 10]
    assert space.decode(vector) == action
    assert space.class_names(vector)["forward_back"] == "back"


@pytest.mark.parametrize(
    "action, message",
    [
        ({"action": 17}, "out of range"),
        ({"action": -1}, "out of range"),
        ({"action": True}, "must be an int"),
        ({}, "missing head 'action'"),
        ({"action": 1, "jump": 0}, "unknown heads"),
    ],
)
def test_encode_rejects_bad_actions(action, message):
    with pytest.raises(ValueError, match=message):
        get_action_space("crafter").encode(action)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"heads": []}, "non-empty list of heads"),
        ({"heads": [{"name": "a", "classes": ["only"]}]}, "at least 2"),
        ({"heads": [{"name": "a", "classes": ["x", "x"]}]}, "unique"),
        ({"heads": [{"name": "a", "classes": ["x", "y"]}, {"name": "a", "classes": ["x", "y"]}]}, "unique"),
        ({"heads": [{"classes": ["x", "y"]}]}, r"heads\[0\]"),
        ([], "action_space must be"),
    ],
)
def test_from_json_rejects_bad_spaces(data, message):
    with pytest.raises(ValueError, match=message):
        ActionSpace.from_json(data)


def test_unknown_env_is_a_value_error():
    with pytest.raises(ValueError, match="unknown env 'atari'"):
        get_action_space("atari")


def test_minerl_actions_map_to_heads():
    space = get_action_space("minecraft")
    heads = heads_from_minerl_action({"forward": 1, "left": 1, "right": 1, "sprint": 1, "sneak": 1,
                                      "attack": 1, "camera": [0.0, -30.0], "inventory": 1})
    assert space.class_names(space.encode(heads)) == {
        "forward_back": "forward", "left_right": "none", "sprint_sneak": "sneak", "use": "off", "attack": "on",
        "jump": "off", "drop": "off", "camera_pitch": "+0.00", "camera_yaw": "-10.00",
    }
    assert heads_from_minerl_action({}) == {name: (5 if name.startswith("camera") else 0) for name in space.head_names}
