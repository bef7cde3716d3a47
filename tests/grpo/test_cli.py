"""`rlir train --config configs/tiny_ar.yaml` runs one full GRPO step end to end, and --resume continues.

With reward.mode=loglik: the tiny random IDM predicts one action whatever the frames, so under the exact
reward every group has equal rewards and the step would move nothing."""
import json

from rlir.cli import main
from rlir.grpo import list_checkpoints

from .conftest import TINY_CONFIG


def test_train_tiny_config_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", str(TINY_CONFIG), "--out", str(out), "reward.mode=loglik"]) == 0
    stdout = capsys.readouterr().out
    assert "step 1/1 | reward" in stdout and "rollout" in stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1]
    step = records[1]
    assert step["adv/abs_max"] > 0 and step["adv/zero_group_frac"] == 0.0 and step["optim/grad_norm"] > 0
    assert step["loss/ratio_mean"] != 1.0 and step["loss/kl"] > 0  # the second inner epoch ran after an update
    for key in ("reward/mean", "reward/std", "reward/head_acc/head0", "adv/std", "loss/kl", "loss/clip_frac_low",
                "loss/clip_frac_high", "loss/ratio_mean", "optim/lr", "optim/grad_norm", "time/rollout",
                "time/decode", "time/reward", "time/advantage", "time/logprob", "time/loss", "time/backward",
                "time/optim", "perf/videos_per_s", "perf/frames_per_s", "perf/tokens_per_s", "eval/reward_mean"):
        assert key in step, key
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert (out / "config.yaml").is_file()
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [1]

    assert main(["train", "--config", str(TINY_CONFIG), "--out", str(out), "--resume", "train.steps=2",
                 "reward.mode=loglik"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert records[2]["adv/abs_max"] > 0 and records[2]["optim/grad_norm"] > 0
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [1, 2]
