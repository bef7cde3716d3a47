"""`rlir eval` and `rlir quickstart` end to end: the shipped Crafter checkpoints on a tiny fresh recording."""
import json

from rlir.cli import main

METRICS = ("eval_idm/frame_accuracy", "reward_idm/frame_accuracy", "psnr_db", "ssim")


def test_eval_of_one_model_writes_a_report(crafter_recording, tmp_path):
    out = tmp_path / "report"
    assert main(["eval", "--data", str(crafter_recording), "--frames", "3", "--prompts", "2", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["prompts"] >= 1 and report["frames"] == 3
    assert report["command"].startswith("rlir eval --data")
    for key in METRICS:
        assert set(report["metrics"][key]) >= {"model"}
    for key in ("eval_idm/frame_accuracy", "reward_idm/frame_accuracy"):
        assert 0.0 <= report["metrics"][key]["model"] <= 1.0 and 0.0 <= report["metrics"][key]["real"] <= 1.0
    assert report["metrics"]["psnr_db"]["model"] > 0 and -1 <= report["metrics"]["ssim"]["model"] <= 1
    assert report["eval_idm_per_action"]["model"]["count"] == report["prompts"] * 3
    for name in ("report.md", "video_grid.png", "video_grid.mp4", "video_grid.gif"):
        assert (out / name).stat().st_size > 0
    assert "| action-following, eval IDM" in (out / "report.md").read_text()


def test_comparing_a_model_with_itself_gives_zero_deltas(crafter_recording, tmp_path):
    out = tmp_path / "report"
    model = "checkpoints/crafter/ar_world_model"
    assert main(["eval", "--data", str(crafter_recording), "--frames", "2", "--prompts", "2", "--world-model", model,
                 "--baseline", model, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    for key in METRICS:
        row = report["metrics"][key]
        assert row["before"] == row["after"] and row["delta"] == 0.0


def test_quickstart_trains_and_reports_before_and_after(crafter_recording, tmp_path):
    out = tmp_path / "quick"
    args = ["quickstart", "--data", str(crafter_recording), "--eval-data", str(crafter_recording), "--out", str(out),
            "--steps", "1", "--prompts", "2",
            "--frames", "2", "rollout.prompts_per_step=1", "rollout.group_size=2", "rollout.n_frames=2",
            "train.micro_batch_size=2", "train.grad_accumulation=1", "eval.prompts=2", "log.tensorboard=false",
            "data.heldout_fraction=0.5"]
    assert main(args) == 0
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["models"]["after"]["step"] == 1
    assert report["command"].startswith("rlir quickstart")
    assert report["models"]["before"]["source"].endswith("ar_world_model")
    for key in METRICS:
        assert {"before", "after", "delta"} <= set(report["metrics"][key])
    assert (out / "eval" / "curves.png").is_file() and (out / "eval" / "video_grid.gif").is_file()
    assert report["all_episodes"]  # the unseen-seed recording, every episode of it
    assert report["commit"] is None or len(report["commit"]) >= 40
    assert report["metrics"]["verifier/scroll_fidelity"]["delta_se"] is not None


def test_action_sensitivity_separates_a_model_that_reads_its_actions():
    import torch

    from rlir.eval.action_sensitivity import action_sensitivity
    from rlir.models.ar_world_model import ARWorldModel
    from rlir.models.tokenizer import VQTokenizer

    torch.manual_seed(0)
    tokenizer = VQTokenizer(image_size=16, patch_size=4, hidden_channels=8, encoder_blocks=0, decoder_blocks=1,
                            code_dim=4, codebook_size=8).eval()
    model = ARWorldModel(codebook_size=8, tokens_per_frame=16, action_head_sizes=[5], n_layers=1, d_model=16,
                         n_heads=2, n_kv_heads=1, max_frames=4, frame_action_embedding=True).eval()
    real = torch.randint(0, 256, (4, 3, 3, 16, 16), dtype=torch.uint8)
    actions = torch.randint(0, 5, (4, 2, 1))
    nll = action_sensitivity(model, tokenizer, real, actions, ["noop", "move_left", "move_right", "move_up", "move_down"])
    assert set(nll) == {"true", "shuffled", "all_class_0", "directions_swapped"}
    assert all(v > 0 for v in nll.values())
    assert nll["true"] != nll["all_class_0"]  # a random model with per-code action embeddings already reacts
    blind = ARWorldModel(codebook_size=8, tokens_per_frame=16, action_head_sizes=[5], n_layers=1, d_model=16,
                         n_heads=2, n_kv_heads=1, max_frames=4).eval()
    with torch.no_grad():
        blind.tok_embeddings.weight[8:] = 0  # action tokens carry nothing
    nll = action_sensitivity(blind, tokenizer, real, actions, ["noop", "move_left", "move_right", "move_up", "move_down"])
    assert max(nll.values()) - min(nll.values()) < 1e-6


def test_a_second_evaluation_of_the_same_model_and_settings_comes_from_the_cache(crafter_recording, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(crafter_recording, data, ignore=shutil.ignore_patterns(".eval_cache"))
    args = ["eval", "--data", str(data), "--frames", "2", "--prompts", "2"]
    assert main([*args, "--out", str(tmp_path / "first")]) == 0
    assert main([*args, "--out", str(tmp_path / "second")]) == 0
    first, second = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("first", "second"))
    assert "cached" not in first["models"]["model"] and "cached" in second["models"]["model"]
    assert first["metrics"] == second["metrics"]
    assert main([*args, "--seed", "1", "--out", str(tmp_path / "third")]) == 0  # other settings: evaluated anew
    assert "cached" not in json.loads((tmp_path / "third" / "report.json").read_text())["models"]["model"]
