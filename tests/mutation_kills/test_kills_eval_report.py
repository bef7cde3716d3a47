"""run_eval's report, file by file, and what it prints; its defaults in use; the held-out prompts it draws; how it
picks its models (docs/mutation.md: these kill the mutants of run_eval (rlir/commands/eval.py),
HeldOutPrompts.from_recording and evaluation_policy that the evaluation tests let through).

The recording is the evaluation tests' tiny Crafter recording, with longer episodes (66 frames) so that the
default 64 prompts fit in its held-out episode. The shipped Crafter checkpoints score it.
"""
import contextlib
import io
import json
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from rlir.data import ClipDataset, Recording, record
from rlir.eval.evaluate import HeldOutPrompts, evaluate_world_model
from rlir.commands.eval import EvalError, action_names, resolve_models, run_eval

SHIPPED = Path("checkpoints/crafter")
EPISODE_FRAMES = 66  # 65 steps


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    data = tmp_path_factory.mktemp("eval_report") / "rec"
    record("crafter", data, episodes=2, steps=EPISODE_FRAMES - 1, seed=3, progress=False)
    return data


def quietly(fn, *args, **kwargs):
    """fn's result and what it printed."""
    with contextlib.redirect_stdout(io.StringIO()) as out:
        result = fn(*args, **kwargs)
    return result, out.getvalue()


def grid_height(prompts: int, rows: int) -> int:
    """Height of the filmstrip of ``prompts`` prompts with ``rows`` video rows of the models' 72-pixel frames."""
    from rlir.eval.media import GAP, HEADER, SCALE

    return prompts * (HEADER + rows * (72 * SCALE + GAP) + GAP)


def scoring_models():
    from rlir.models.idm import InverseDynamicsModel
    from rlir.models.tokenizer import VQTokenizer

    vq = VQTokenizer.from_pretrained(SHIPPED / "tokenizer").eval()
    idms = {"eval_idm": InverseDynamicsModel.from_pretrained(SHIPPED / "eval_idm").eval(),
            "reward_idm": InverseDynamicsModel.from_pretrained(SHIPPED / "idm").eval()}
    return vq, idms


# ---- HeldOutPrompts.from_recording: every window of the held-out episodes, evenly spread -------------------

def windows(recording, episodes, frames):
    """Every (frames + 1)-frame window of ``episodes`` (stride 1), with its actions, episode by episode."""
    out = []
    for episode in episodes:
        video, actions = recording.load_episode(episode)
        video, actions = torch.from_numpy(video.copy()).permute(0, 3, 1, 2), torch.from_numpy(actions.copy())
        for start in range(len(video) - frames):
            out.append((video[start:start + frames + 1], actions[start:start + frames]))
    return out


def test_prompts_come_from_the_held_out_episodes_only_by_default(recording):
    recording = Recording(recording)
    heldout = ClipDataset(recording, split="heldout").episode_ids
    assert 0 < len(heldout) < len(recording.episode_ids)
    every = windows(recording, heldout, 2)
    prompts = HeldOutPrompts.from_recording(recording, 1000, 2)
    assert len(prompts) == len(every) == EPISODE_FRAMES - 2
    assert torch.equal(prompts.real, torch.stack([w for w, _ in every]))
    assert torch.equal(prompts.actions, torch.stack([a for _, a in every]))


def test_all_episodes_takes_every_window_of_every_episode(recording):
    recording = Recording(recording)
    every = windows(recording, recording.episode_ids, 2)
    prompts = HeldOutPrompts.from_recording(recording, 1000, 2, all_episodes=True)
    assert len(prompts) == len(every) == 2 * (EPISODE_FRAMES - 2)
    assert torch.equal(prompts.real, torch.stack([w for w, _ in every]))


def test_fewer_prompts_are_spread_evenly_from_the_first_window_to_the_last(recording):
    recording = Recording(recording)
    every = windows(recording, ClipDataset(recording, split="heldout").episode_ids, 2)
    assert len(every) == 64
    prompts = HeldOutPrompts.from_recording(recording, 4, 2)
    assert torch.equal(prompts.real, torch.stack([every[i][0] for i in (0, 21, 42, 63)]))


def test_a_held_out_episode_that_holds_one_clip_gives_one_prompt(recording):
    recording = Recording(recording)
    episode = ClipDataset(recording, split="heldout").episode_ids[0]
    prompts = HeldOutPrompts.from_recording(recording, 5, EPISODE_FRAMES - 1)
    assert len(prompts) == 1
    assert torch.equal(prompts.real[0], torch.from_numpy(recording.load_episode(episode)[0].copy()).permute(0, 3, 1, 2))


# ---- resolve_models ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory):
    """A GRPO run as `rlir train --out` leaves it: one checkpoint (the shipped AR model's weights) whose config
    names the model it started from, a config.yaml naming its scoring models (copies of the shipped ones), and
    a metrics.jsonl with the training reward."""
    from rlir.models.loading import load_pretrained_world_model
    from rlir.grpo.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("grpo_run")
    run = root / "run"
    scoring = {key: root / f"{key}_copy" for key in ("tokenizer", "idm", "eval_idm")}
    for key, path in scoring.items():
        shutil.copytree(SHIPPED / key, path)
    base = str((SHIPPED / "ar_world_model").resolve())
    model = load_pretrained_world_model(base, "base")
    save_checkpoint(run / "checkpoints", 1, model.state_dict(), {},
                    meta={"config": {"models": {"world_model": base}}})
    (run / "config.yaml").write_text(yaml.safe_dump({"models": {"world_model": base,
                                                                **{k: str(v) for k, v in scoring.items()}}}))
    rows = [{"step": s, "reward/mean": 0.1 * s, "eval_idm/reward_mean": 0.05 * s} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run, base, scoring


def test_a_runs_config_names_its_scoring_models_and_a_flag_overrides_it(grpo_run, tmp_path):
    run, base, scoring = grpo_run
    models, paths = resolve_models(run)
    assert models == {"before": Path(base), "after": run}
    assert paths == scoring
    models, paths = resolve_models(run, idm=tmp_path)
    assert paths == {**scoring, "idm": tmp_path}


def test_run_and_world_model_together_are_refused():
    with pytest.raises(EvalError, match=r"^give --run or --world-model, not both$"):
        resolve_models("some-run", "some-model")


def test_a_run_without_checkpoints_is_refused(tmp_path):
    with pytest.raises(EvalError, match=rf"^--run {re.escape(str(tmp_path))} is not a GRPO run \(no checkpoints/\)$"):
        resolve_models(tmp_path)


# ---- the report of one model, written with out -------------------------------------------------------------

PROMPTS, FRAMES, GRID, TEMPERATURE, SEED = 3, 2, 2, 2.0, 5


@pytest.fixture(scope="module")
def written(recording, tmp_path_factory):
    """run_eval of a copy of the shipped AR model with every option away from its default, into a directory
    whose parents do not exist yet; and what the report should hold, computed from the parts."""
    from rlir.eval.action_sensitivity import action_sensitivity
    from rlir.models.loading import load_pretrained_world_model

    root = tmp_path_factory.mktemp("written")
    world_model = root / "my_model"
    shutil.copytree(SHIPPED / "ar_world_model", world_model)
    out = root / "not" / "yet" / "eval"
    report, printed = quietly(run_eval, recording, world_model=world_model, frames=FRAMES, prompts=PROMPTS,
                              grid=GRID, temperature=TEMPERATURE, seed=SEED, action_sensitivity=True, out=out,
                              command="rlir eval --my-flags")

    vq, idms = scoring_models()
    data = Recording(recording, frame_size=vq.frame_size)
    held = HeldOutPrompts.from_recording(data, PROMPTS, FRAMES)
    model = load_pretrained_world_model(world_model, "world_model")
    metrics, videos = evaluate_world_model(model, vq, idms, held, data.action_space, temperature=TEMPERATURE,
                                           seed=SEED)
    # The sampler's settings change the videos here, so matching them is not an accident.
    for temperature, seed in ((1.0, SEED), (TEMPERATURE, 0)):
        other = evaluate_world_model(model, vq, idms, held, data.action_space, temperature=temperature, seed=seed)[1]
        assert not torch.equal(other, videos)
    nll = action_sensitivity(model, vq, held.real, held.actions, data.action_space.heads[0].classes)
    return dict(report=report, printed=printed, out=out, world_model=world_model, data=data, held=held,
                metrics=metrics, videos=videos, nll=nll)


def test_the_report_records_the_run_and_the_models_scores(written):
    report, metrics, data = written["report"], written["metrics"], written["data"]
    assert json.loads((written["out"] / "report.json").read_text()) == report
    assert report["prompts"] == PROMPTS and report["frames"] == FRAMES
    assert report["temperature"] == TEMPERATURE and report["seed"] == SEED
    assert report["data"] == str(data.root) and report["all_episodes"] is False
    assert report["command"] == "rlir eval --my-flags" and report["video_rows"] == ["real", "model"]
    assert report["models"] == {"model": {"source": str(written["world_model"]), "base": str(written["world_model"]),
                                          "step": 0}}
    assert report["scoring_models"] == {k: str(SHIPPED / k) for k in ("tokenizer", "idm", "eval_idm")}
    for key in ("psnr_db", "ssim", "eval_idm/frame_accuracy", "reward_idm/frame_accuracy", "eval_idm/macro_f1"):
        assert report["metrics"][key]["model"] == pytest.approx(metrics[key], abs=1e-12)
    assert report["eval_idm_per_action"]["model"] == json.loads(json.dumps(metrics["eval_idm/report"].to_json()))
    assert report["action_sensitivity_nll"] == {"model": pytest.approx(written["nll"], abs=1e-12)}


def test_the_action_sensitivity_nlls_are_in_report_md(written):
    md = (written["out"] / "report.md").read_text()
    assert "## Action sensitivity (teacher-forced NLL per code, nats)" in md
    assert "| model | " + " | ".join(f"{v:.4f}" for v in written["nll"].values()) + " |" in md


def test_the_report_directory_holds_the_report_and_the_video_grid(written):
    out = written["out"]
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "video_grid.gif", "video_grid.mp4",
                                                     "video_grid.png"]
    md = (out / "report.md").read_text()
    assert "![video grid](video_grid.gif)" in md and "Rows: real, model;" in md and "## Training" not in md


def test_the_filmstrip_shows_the_first_grid_prompts_labelled_with_their_commanded_actions(written):
    from rlir.eval.media import filmstrip

    held, space = written["held"], written["data"].action_space
    assert space.num_heads == 1
    labels = [[space.heads[0].classes[int(a)] for a in prompt[:, 0]] for prompt in held.actions[:GRID]]
    expected = filmstrip({"real": held.real, "model": written["videos"]}, labels, count=GRID)
    png = Image.open(written["out"] / "video_grid.png").convert("RGB")
    np.testing.assert_array_equal(np.asarray(png), np.asarray(expected))


def test_what_run_eval_prints(written):
    from rlir.eval.report import HEADLINE
    from rlir.metrics import format_report

    printed, report, out = written["printed"], written["report"], written["out"]
    lines = printed.splitlines()
    nll = ", ".join(f"{k} {v:.4f}" for k, v in written["nll"].items())
    assert list(written["nll"]) == ["true", "shuffled", "all_class_0", "directions_swapped"]
    assert f"model: teacher-forced NLL per code {nll}" in lines
    assert f"== model: {written['world_model']}" in lines
    assert format_report(written["metrics"]["eval_idm/report"]) in printed
    for key, title in HEADLINE:
        row = report["metrics"][key]
        if all(v is None for v in row.values()):
            assert not any(line.startswith(title) for line in lines)  # e.g. the verifier with no move to judge
            continue
        values = [f"{k} {row[k]:.4f}" for k in ("model", "real") if row.get(k) is not None]
        assert f"{title:66s} " + "  ".join(values) in lines
    assert lines[-1] == f"report: {out / 'report.md'} (and report.json, video_grid.png, video_grid.mp4, video_grid.gif)"


# ---- the defaults, in use ----------------------------------------------------------------------------------

def test_by_default_64_prompts_seed_0_a_grid_of_4_and_no_action_sensitivity(recording, tmp_path):
    report, printed = quietly(run_eval, recording, frames=1, out=tmp_path)  # out exists already: fine
    assert report["prompts"] == 64 and report["seed"] == 0 and report["temperature"] == 1.0
    assert "teacher-forced" not in printed and "action_sensitivity_nll" not in report
    assert Image.open(tmp_path / "video_grid.png").height == grid_height(prompts=4, rows=2)  # real, model


@pytest.fixture(scope="module")
def small_recording(tmp_path_factory):
    """36-pixel frames: half the models' size."""
    data = tmp_path_factory.mktemp("small") / "rec"
    record("crafter", data, episodes=2, steps=6, seed=4, size=36, progress=False)
    return data


def test_by_default_a_prompt_needs_16_frames(small_recording):
    with pytest.raises(EvalError, match=r"^--data: no heldout clips in .*a clip needs 16 frames"):
        run_eval(small_recording, prompts=1)


def test_a_recording_at_another_size_is_evaluated_at_the_models_size(small_recording, tmp_path):
    report, _ = quietly(run_eval, small_recording, frames=1, prompts=1, out=tmp_path / "eval")
    assert report["prompts"] == 1 and report["metrics"]["psnr_db"]["model"] is not None
    assert Image.open(tmp_path / "eval" / "video_grid.png").height == grid_height(prompts=1, rows=2)


# ---- a GRPO run: before and after, its scoring models, its training curves ----------------------------------

def test_a_run_is_reported_before_and_after_with_its_training_curves(recording, grpo_run):
    run, base, scoring = grpo_run
    report, printed = quietly(run_eval, recording, run=run, frames=1, prompts=1)
    out = run / "eval"
    assert report["video_rows"] == ["real", "before", "after"]
    assert report["models"]["before"]["source"] == base and report["models"]["after"]["step"] == 1
    assert report["scoring_models"] == {k: str(v) for k, v in scoring.items()}
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "report.json", "report.md", "video_grid.gif",
                                                     "video_grid.mp4", "video_grid.png"]
    assert "## Training\n\n![training curves](curves.png)" in (out / "report.md").read_text()
    assert printed.splitlines()[-1] == (f"report: {out / 'report.md'} (and report.json, video_grid.png, "
                                        f"video_grid.mp4, video_grid.gif, curves.png)")


# ---- under torchrun --------------------------------------------------------------------------------------------

def test_one_process_under_torchrun_reports_as_a_plain_process(recording, tmp_path, monkeypatch):
    """torchrun's environment for a job of one CPU process: run_eval joins it (gloo) as rank 0 and reports."""
    from rlir.parallel import close_distributed

    plain, _ = quietly(run_eval, recording, frames=1, prompts=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(port)).items():
        monkeypatch.setenv(key, value)
    try:
        joined, _ = quietly(run_eval, recording, frames=1, prompts=2, out=tmp_path)
        assert torch.distributed.is_initialized() and torch.distributed.get_world_size() == 1
    finally:
        close_distributed()
    assert joined["metrics"] == plain["metrics"] and (tmp_path / "report.json").is_file()


# ---- small parts -----------------------------------------------------------------------------------------------

def test_the_grid_labels_join_the_heads_of_one_action_with_a_plus():
    from rlir.envs.action_space import ActionHead, ActionSpace

    space = ActionSpace([ActionHead("move", ("noop", "left")), ActionHead("jump", ("no", "yes"))])
    assert action_names(space, torch.tensor([[1, 1], [0, 0], [1, 0]])) == ["left+yes", "noop+no", "left+no"]


def test_the_evaluation_policy_takes_the_sampler_options_without_the_training_warning():
    import warnings

    from rlir.policies import evaluation_policy
    from rlir.models.ar_world_model import ARWorldModel
    from rlir.models.tokenizer import VQTokenizer

    tokenizer = VQTokenizer(image_size=16, patch_size=4, hidden_channels=8, encoder_blocks=0, decoder_blocks=1,
                            code_dim=4, codebook_size=8)
    model = ARWorldModel(codebook_size=8, tokens_per_frame=16, action_head_sizes=[5], n_layers=1, d_model=16,
                         n_heads=2, n_kv_heads=1, max_frames=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # top_k's off-policy warning concerns training only
        policy = evaluation_policy(model, tokenizer, temperature=0.5, top_k=3)
    assert (policy.temperature, policy.top_k) == (0.5, 3)
