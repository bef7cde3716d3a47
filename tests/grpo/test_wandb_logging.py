"""log.wandb: a tiny run logs to an offline W&B run, which is read back from its own files: the same metrics
as metrics.jsonl at the same steps, the run's config, the evaluation video grid at each evaluation and the
curves at the end. WANDB_MODE is respected, and a resumed run continues the same W&B run.

The offline run's history lives in ``run-<id>.wandb``: W&B's record log (a 7-byte file header, then 32 KiB
blocks of records, each a 7-byte header - CRC, little-endian length, type: full, first, middle or last piece -
and a piece of a serialised ``wandb_internal_pb2.Record``). wandb 0.31 ships no Python reader for it, so
``offline_records`` below reads it.
"""
import json
import struct
from pathlib import Path

import pytest
import torch

wandb = pytest.importorskip("wandb", reason="wandb is not installed (pip install wandb)")
# The curves of a run without held-out scores have an empty legend on their right panel.
pytestmark = pytest.mark.filterwarnings("ignore:No artists with labels found:UserWarning")

from rlir.grpo import GRPOTrainer, config_from_dict  # noqa: E402
from rlir.grpo.logging import WANDB_RUN_ID_FILE, MetricsLogger, read_metrics  # noqa: E402

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def offline_records(run_dir: Path) -> list:
    """Every record of an offline run directory's ``run-<id>.wandb`` file."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    records, pieces, pos = [], [], HEADER
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # too little of the block left for a header: zero padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0:  # zeros: end of the written log
            break
        pieces.append(data[pos + HEADER:pos + HEADER + length])
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(pieces))
            records.append(record)
            pieces = []
    return records


def history(records) -> dict:
    """step -> {key: value} of the run's logged rows (W&B's own keys, starting with _, left out)."""
    rows = {}
    for record in records:
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:  # a media value arrives as one item per field: (name, field) keys
            keys = list(item.nested_key) or [item.key]
            target = row
            for key in keys[:-1]:
                target = target.setdefault(key, {})
            target[keys[-1]] = json.loads(item.value_json)
        rows.setdefault(row["_step"], {}).update({k: v for k, v in row.items() if not k.startswith("_")})
    return rows


def run_config(records) -> dict:
    """The config the run started with (its run record) and any later updates (config records)."""
    config = {}
    for record in records:
        kind = record.WhichOneof("record_type")
        updates = record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
        config.update({item.key: json.loads(item.value_json) for item in updates})
    return config


def run_id(run_dir: Path) -> str:
    (path,) = run_dir.glob("run-*.wandb")
    return path.stem[len("run-"):]


@pytest.fixture
def wandb_dir(tmp_path, monkeypatch):
    """An offline W&B setup inside the test's folder: no network, no login, nothing outside tmp_path."""
    folder = tmp_path / "wandb_dir"
    folder.mkdir()
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline must be the default
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(folder))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    return folder


def offline_runs(folder: Path) -> list:
    return sorted((folder / "wandb").glob("offline-run-*"))


def test_a_run_logs_metrics_videos_and_curves_to_an_offline_wandb_run(tiny_dict, tmp_path, wandb_dir):
    tiny_dict["reward"]["mode"] = "loglik"
    tiny_dict["train"].update(steps=2, eval_interval=1, checkpoint_interval=0)
    tiny_dict["log"]["wandb"] = True
    out = tmp_path / "run"
    trainer = GRPOTrainer.from_config(config_from_dict(tiny_dict), out_dir=out)
    trainer.train()
    trainer.close()

    (run_dir,) = offline_runs(wandb_dir)
    records = offline_records(run_dir)
    rows = history(records)
    jsonl = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in jsonl] == [0, 1, 2]
    for line in jsonl:  # every metric of every jsonl line, at its step
        logged = rows[line["step"]]
        for key, value in line.items():
            if key not in ("step", "time"):
                assert logged[key] == pytest.approx(value, nan_ok=True), (line["step"], key)
    assert {"reward/mean", "loss/kl", "eval/reward_mean"} <= rows[2].keys()

    for step in (0, 1, 2):  # an evaluation at the start and after each step
        grid, filmstrip = rows[step]["eval/video_grid"], rows[step]["eval/filmstrip"]
        assert grid["_type"] == "video-file" and filmstrip["_type"] == "image-file"
        assert (run_dir / "files" / grid["path"]).stat().st_size > 0
        assert (run_dir / "files" / filmstrip["path"]).stat().st_size > 0
    curves = rows[2]["curves"]
    assert curves["_type"] == "image-file" and (run_dir / "files" / curves["path"]).is_file()

    config = run_config(records)
    assert config["train"]["steps"] == 2 and config["log"]["wandb"] is True
    assert (out / WANDB_RUN_ID_FILE).read_text() == run_id(run_dir)


def test_wandb_mode_is_respected(tmp_path, wandb_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = MetricsLogger(tmp_path / "run", tensorboard=False, stdout=False, wandb=True)
    logger.log(1, {"reward/mean": 0.5})
    logger.eval_videos(1, torch.zeros(2, 3, 3, 8, 8, dtype=torch.uint8))
    logger.close()
    assert offline_runs(wandb_dir) == [] and read_metrics(tmp_path / "run" / "metrics.jsonl")[0]["reward/mean"] == 0.5


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, wandb_dir):
    first = MetricsLogger(tmp_path / "run", tensorboard=False, stdout=False, wandb=True)
    first.log(1, {"reward/mean": 0.25})
    first.close()
    first_id = (tmp_path / "run" / WANDB_RUN_ID_FILE).read_text()
    resumed = MetricsLogger(tmp_path / "run", tensorboard=False, stdout=False, wandb=True, resume_step=1)
    resumed.log(2, {"reward/mean": 0.75})
    resumed.close()
    runs = offline_runs(wandb_dir)
    assert len(runs) == 2 and [run_id(r) for r in runs] == [first_id, first_id]
    assert history(offline_records(runs[1]))[2]["reward/mean"] == 0.75
