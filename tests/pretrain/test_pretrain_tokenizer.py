import json
import math

import pytest
import torch

import rlir.cli
from rlir.models.tokenizer import VQTokenizer
from rlir.metrics.image import psnr
from rlir.pretrain.common import atomic_directory
from rlir.pretrain.tokenizer import train


def test_pretrain_tokenizer_end_to_end(tiny_recording, tmp_path, capsys):
    out = tmp_path / "tokenizer"
    argv = ["pretrain", "tokenizer", "--data", str(tiny_recording), "--out", str(out), "--steps", "3",
            "--batch", "4", "--log-every", "2", "--quiet"]
    assert rlir.cli.main(argv) == 0
    assert "held-out PSNR" in capsys.readouterr().out
    files = {"config.json", "diffusion_pytorch_model.safetensors", "metrics.jsonl", "metrics.json",
             "reconstructions.png"}
    assert files <= {p.name for p in out.iterdir()}
    assert not list(tmp_path.glob(".tokenizer.*"))  # the staging directory was renamed away

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 3]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["heldout_frames"] == 31 and metrics["train_frames"] == 31  # one 31-frame episode each
    assert math.isfinite(metrics["heldout_psnr_db"]) and 1 <= metrics["codes_used"] <= 512
    assert metrics["dtype"] == "bf16" and metrics["checkpoint_bytes"] < 3e6

    tokenizer = VQTokenizer.from_pretrained(out, torch_dtype=torch.float32)
    assert tokenizer.frame_size == (72, 72)  # the recording's own size by default: one code a Crafter tile
    assert tokenizer.encode(torch.zeros(2, 3, 72, 72, dtype=torch.uint8)).shape == (2, 9, 9)

    # Rerunning into a full directory needs --overwrite.
    assert rlir.cli.main(argv) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    assert rlir.cli.main(argv + ["--overwrite", "--steps", "1"]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 1


@pytest.mark.parametrize("overrides, message", [
    (dict(steps=0), "steps must be an int >= 1"),
    (dict(batch=-1), "batch must be an int >= 1"),
    (dict(lr=0.0), "lr must be a positive number"),
    (dict(codebook_size=1), "codebook_size must be an int >= 2"),
    (dict(dtype="int8"), "dtype must be one of"),
    (dict(heldout_fraction=0.0), r"heldout_fraction must be in \(0, 1\)"),
])
def test_bad_arguments_raise_before_any_work(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(tmp_path / "no-recording", tmp_path / "out", **overrides)


def test_cli_reports_a_missing_recording(tmp_path, capsys):
    argv = ["pretrain", "tokenizer", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]
    assert rlir.cli.main(argv) == 1
    assert "no manifest" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_psnr_matches_a_hand_computation():
    original = torch.tensor([[[0, 10], [20, 30]], [[5, 5], [5, 5]]], dtype=torch.uint8)
    reconstruction = torch.tensor([[[1, 10], [20, 27]], [[5, 5], [5, 5]]], dtype=torch.uint8)
    # frame 0: squared errors 1, 0, 0, 9 -> MSE 2.5; frame 1 is exact (MSE floored at 1e-10).
    expected = torch.tensor([10 * math.log10(255**2 / 2.5), 10 * math.log10(255**2 / 1e-10)], dtype=torch.float64)
    torch.testing.assert_close(psnr(original, reconstruction), expected)
    with pytest.raises(ValueError, match="must be uint8 tensors of one shape"):
        psnr(original.float(), reconstruction.float())


def test_atomic_directory_keeps_the_old_directory_when_writing_fails(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(final, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
        raise RuntimeError("interrupted")
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (final / "old.txt").is_file()
    with atomic_directory(final, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.txt"]
