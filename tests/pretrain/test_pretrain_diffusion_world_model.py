import json
import math

import pytest
import torch
from safetensors import safe_open

import rlir.cli
from rlir.models import DiTWorldModel
from rlir.models.tokenizer import VQTokenizer
from rlir.pretrain.diffusion_world_model import train

TINY_MODEL = ["--layers", "1", "--d-model", "32", "--heads", "2", "--max-frames", "6", "--clip-frames", "3",
              "--eval-frames", "4", "--eval-prompts", "2", "--batch", "2", "--sample-steps", "2"]


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    """A randomly initialised tokenizer: the pipeline does not care how good its latents are."""
    out = tmp_path_factory.mktemp("tokenizer")
    torch.manual_seed(0)
    VQTokenizer(hidden_channels=16, encoder_blocks=0, decoder_blocks=0, code_dim=8, codebook_size=32).save_pretrained(out)
    return out


def test_pretrain_diffusion_world_model_end_to_end(tiny_recording, tiny_tokenizer, tmp_path, capsys):
    out = tmp_path / "dit"
    argv = ["pretrain", "world-model", "--kind", "diffusion", "--data", str(tiny_recording), "--tokenizer",
            str(tiny_tokenizer), "--out", str(out), "--steps", "3", "--log-every", "2", "--eval-every", "2",
            "--threads", "1", "--quiet", *TINY_MODEL]
    assert rlir.cli.main(argv) == 0
    assert "held-out flow-matching loss" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"config.json", "diffusion_pytorch_model.safetensors", "metrics.jsonl",
                                              "metrics.json", "generations.png"}
    assert [p.name for p in tmp_path.iterdir()] == ["dit"]  # the staging directory was renamed away

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 2, 3] and "heldout_loss" in lines[1]
    metrics = json.loads((out / "metrics.json").read_text())
    heldout, generation = metrics["heldout"], metrics["heldout"]["generation"]
    assert metrics["kind"] == "diffusion" and math.isfinite(heldout["loss"]) and heldout["clips"] == 10  # 31 frames / 3
    assert generation["prompts"] == 2 and generation["generated_frames"] == 4 and generation["sample_steps"] == 2
    for name in ("ode", "copy_context", "frame_space_ceiling"):
        assert len(generation[name]["psnr_db_per_step"]) == 4 and math.isfinite(generation[name]["psnr_db"])
    assert metrics["model"]["dtype"] == "bf16" and metrics["training"]["steps"] == 3

    with safe_open(out / "diffusion_pytorch_model.safetensors", framework="pt") as handle:
        assert handle.get_tensor("patch_out.weight").dtype == torch.bfloat16
    model = DiTWorldModel.from_pretrained(out)
    cfg = model.config
    assert cfg.frame_space == "tokenizer_latents" and cfg.in_channels == 8 and cfg.frame_size == [8, 8]
    assert cfg.action_head_sizes == [17] and cfg.latent_scale > 0

    assert rlir.cli.main(argv) == 1  # a full output directory needs --overwrite
    assert "pass --overwrite" in capsys.readouterr().err


def test_pixel_frame_space_needs_no_tokenizer(tiny_recording, tmp_path):
    metrics = train(tiny_recording, tmp_path / "dit", frame_space="pixels", patch_size=24, steps=2, batch=2,
                    clip_frames=3, max_frames=6, layers=1, d_model=32, heads=2, eval_prompts=1, eval_frames=3,
                    eval_every=0, sample_steps=1, progress=False)
    assert metrics["model"]["config"]["frame_space"] == "pixels" and metrics["model"]["config"]["in_channels"] == 3
    assert metrics["training"]["tokenizer"] is None
    assert metrics["heldout"]["generation"]["frame_space_ceiling"]["psnr_db"] > 100  # pixels round-trip exactly


@pytest.mark.parametrize("overrides, message", [
    (dict(frame_space="voxels"), "frame_space must be one of"),
    (dict(steps=0), "steps must be an int >= 1"),
    (dict(context_frames=4), r"context_frames \(4\) must be < clip_frames \(4\)"),
    (dict(clip_frames=17), r"clip_frames \(17\) must be <= max_frames \(16\)"),
    (dict(eval_frames=16), r"eval_frames \(16\) must be < max_frames"),
    (dict(sample_steps=0), "sample_steps must be an int >= 1"),
    (dict(lr=0.0), "lr must be a positive number"),
    (dict(heads=5), "n_heads"),
])
def test_bad_arguments_raise_before_any_work(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(tmp_path / "no-recording", tmp_path / "out", tmp_path / "no-tokenizer", **overrides)
    assert not (tmp_path / "out").exists()


def test_cli_rejects_options_of_the_other_kind(tiny_recording, tiny_tokenizer, tmp_path, capsys):
    base = ["pretrain", "world-model", "--kind", "diffusion", "--data", str(tiny_recording), "--out",
            str(tmp_path / "out")]
    assert rlir.cli.main(base + ["--tokenizer", str(tiny_tokenizer), "--kv-heads", "2"]) == 1
    assert "--kv-heads is only for --kind ar" in capsys.readouterr().err
    assert rlir.cli.main(base) == 1
    assert "needs --tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_pretraining_quality_check_defaults_to_the_evaluation_sampler():
    """The held-out generation of `rlir pretrain world-model --kind diffusion` uses rlir eval's ODE step count
    unless --sample-steps says otherwise (one documented evaluation sampler)."""
    from rlir.policies import EVAL_ODE_STEPS
    from rlir.pretrain.config import DiffusionWorldModelPretrain

    assert DiffusionWorldModelPretrain.model_fields["sample_steps"].default == EVAL_ODE_STEPS


def test_a_second_stage_on_longer_clips_starts_from_the_first(tiny_recording, tiny_tokenizer, tmp_path):
    common = ["pretrain", "world-model", "--kind", "diffusion", "--data", str(tiny_recording), "--tokenizer",
              str(tiny_tokenizer), "--threads", "1", "--quiet", "--eval-every", "0", *TINY_MODEL]
    assert rlir.cli.main([*common, "--steps", "2", "--out", str(tmp_path / "first")]) == 0
    assert rlir.cli.main([*common, "--steps", "1", "--clip-frames", "5", "--init", str(tmp_path / "first"),
                          "--out", str(tmp_path / "second")]) == 0
    metrics = json.loads((tmp_path / "second" / "metrics.json").read_text())
    assert metrics["training"]["init"] == str(tmp_path / "first") and metrics["training"]["clip_frames"] == 5
    with pytest.raises(ValueError, match="init"):
        train(tiny_recording, tmp_path / "third", tiny_tokenizer, init=str(tmp_path / "first"), frame_space="pixels",
              steps=1, quiet=True, layers=1, d_model=32, heads=2, max_frames=6, clip_frames=3, eval_frames=4)


@pytest.mark.parametrize("grid, requested, default, expected", [
    ((9, 9), None, 2, 1),       # the Crafter tokenizer's 9x9 code grid
    ((15, 20), None, 2, 1),     # a 160x120 recording's tokenizer grid: the default that stopped pretraining
    ((18, 24), None, 2, 2),
    ((120, 160), None, 8, 8),   # pixels
    ((30, 45), None, 8, 5),
    ((18, 24), 3, 2, 3),        # a requested size that fits is kept, even above the default
])
def test_the_default_patch_size_fits_any_frame_grid(grid, requested, default, expected):
    from rlir.pretrain.diffusion_world_model import fitting_patch_size

    assert fitting_patch_size(grid, requested, default) == expected


def test_a_patch_size_that_does_not_fit_names_one_that_does():
    from rlir.pretrain.diffusion_world_model import fitting_patch_size

    with pytest.raises(ValueError, match=r"patch_size: 2 does not divide the frame grid \[15, 20\]; 1 does"):
        fitting_patch_size((15, 20), 2, 2)
