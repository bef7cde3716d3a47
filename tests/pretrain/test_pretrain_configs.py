"""`rlir pretrain` settings: one schema per target (rlir.pretrain.config), from YAML configs and flags; the
configs under configs/pretrain/ are what checkpoints/crafter/make.sh trains the shipped models with."""
import re
import shlex
from pathlib import Path

import pytest

import rlir.cli
from rlir.pretrain.config import TokenizerPretrain, from_args
from rlir.pretrain.idm import ROLES
from rlir.pretrain.tokenizer import train as train_tokenizer
from rlir.pretrain.world_model import KINDS

REPO = Path(__file__).resolve().parents[2]
MAKE_SH = REPO / "checkpoints" / "crafter" / "make.sh"
SCHEMAS = {"tokenizer": ({None: TokenizerPretrain}, None), "idm": (ROLES, "role"), "world-model": (KINDS, "kind")}


def parsed(argv):
    """The validated settings of an `rlir pretrain ...` command line."""
    args = rlir.cli.build_parser().parse_args(argv)
    schemas, selector = SCHEMAS[args.target]
    return from_args(args, schemas, selector)


def test_make_sh_trains_every_shipped_model_from_a_config_that_validates():
    script = MAKE_SH.read_text().replace("\\\n", " ")
    work = re.search(r"^WORK=(\S+)", script, re.M).group(1)
    recorded = re.search(r"rlir data record .*--out (\S+)", script).group(1).strip('"').replace("$WORK", work)
    copied = re.search(r"for model in ([\w ]+); do", script).group(1).split()
    commands = [shlex.split(c) for c in re.findall(r"rlir (pretrain [^&;()\n]+)", script)]
    assert [argv[:2] for argv in commands] == [["pretrain", "tokenizer"], ["pretrain", "idm"], ["pretrain", "idm"],
                                                *[["pretrain", "world-model"]] * 5]  # the AR in 3 stages, the DiT in 2
    outs = []
    for argv in commands:
        assert len(argv) == 4 and argv[2] == "--config", argv  # every setting is in the config
        assert (REPO / argv[3]).is_file(), argv[3]
        settings = parsed(argv)  # validates against the target's schema
        assert Path(settings.data) == Path(recorded), argv[3]
        if argv[1] == "world-model":
            assert Path(settings.tokenizer) == outs[0], argv[3]  # the tokenizer trained above
            if settings.init is not None:
                assert Path(settings.init) == outs[-1], argv[3]  # a second stage starts from the first
        outs.append(Path(settings.out))
    shipped = [out for out in outs if not re.search(r"_stage\d$", out.name)]
    assert [out.name for out in shipped] == copied and {out.parent for out in outs} == {Path(work)}
    named = sorted(Path(argv[3]).name for argv in commands)
    assert named == sorted(p.name for p in (REPO / "configs" / "pretrain").glob("*.yaml"))


def test_flags_override_the_config_and_defaults_follow_kind_and_role():
    config = "configs/pretrain/crafter_ar_world_model.yaml"  # found as shipped data from any directory
    cfg = parsed(["pretrain", "world-model", "--config", config, "--steps", "7", "--no-quiet"])
    assert cfg.steps == 7 and cfg.quiet is False and cfg.eval_every == 250 and cfg.frame_action_embedding
    cfg = parsed(["pretrain", "world-model", "--data", "d", "--out", "o", "--tokenizer", "t", "--kind", "diffusion"])
    assert (cfg.steps, cfg.batch, cfg.clip_frames, cfg.eval_every) == (3000, 8, 4, 500)
    assert parsed(["pretrain", "idm", "--data", "d", "--out", "o", "--eval"]).model_dump(include={"seed", "width"}) \
        == {"seed": 1, "width": 96}
    assert parsed(["pretrain", "idm", "--data", "d", "--out", "o"]).model_dump(include={"seed", "width"}) \
        == {"seed": 0, "width": 128}


@pytest.mark.parametrize("config, argv, message", [
    ({"kind": "ar", "frame_space": "pixels"}, [], "frame_space is only for kind diffusion"),
    ({"kind": "diffusion"}, ["--kv-heads", "2"], "--kv-heads is only for --kind ar"),
    ({"stepz": 3}, [], "stepz unknown key (known: data, out, seed"),
    ({"steps": "many"}, [], "steps must be an int >= 1, got 'many'"),
    ({"lr": 0}, [], "lr must be a positive number, got 0"),
    ({"heldout_fraction": 1.0}, [], r"heldout_fraction must be in (0, 1), got 1.0"),
    ({"clip_frames": 20}, [], "clip_frames (20) must be <= max_frames (16)"),
    ({"kind": "diffusion", "context_frames": 4}, [], "context_frames (4) must be < clip_frames (4)"),
    ({"kind": "voxels"}, [], "kind must be one of ['ar', 'diffusion'], got 'voxels'"),
    ({}, ["--data", "d"], "out is required"),
])
def test_bad_settings_are_one_line_naming_the_key(tmp_path, capsys, config, argv, message):
    import yaml

    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({"data": "d", "out": str(tmp_path / "out"), "tokenizer": "t", **config}))
    if argv[:1] == ["--data"]:
        path.write_text("{}")
    assert rlir.cli.main(["pretrain", "world-model", "--config", str(path), *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlir pretrain world-model: error: ") and len(err.splitlines()) == 1, err
    assert message in err, err
    assert not (tmp_path / "out").exists()


def test_train_takes_the_schema_names(tmp_path):
    with pytest.raises(ValueError, match="codebook_sise unknown key"):
        train_tokenizer(tmp_path / "data", tmp_path / "out", codebook_sise=8)
