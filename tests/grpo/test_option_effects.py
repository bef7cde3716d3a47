"""Options whose effect no other test shows: changing each changes what its description says it changes.
docs/experiments.md, "Options removed (issue 23)", lists every option and the test that shows its effect; the
last test here keeps that table true."""
import re

import pytest
import torch
import yaml

from rlir.grpo import GRPOTrainer, config_from_dict
from rlir.grpo.builders import build_datasets, build_models, build_run
from rlir.grpo.logging import read_metrics
from rlir.grpo.checkpoint import list_checkpoints
from rlir.grpo.config import REMOVED_KEYS, GRPOConfig

from .conftest import REPO, TINY_CONFIG, config_keys

TINY_DIFFUSION = REPO / "configs" / "tiny_diffusion.yaml"
CPU = torch.device("cpu")


def tiny(path=TINY_CONFIG, **sections):
    data = yaml.safe_load(path.read_text())
    data["log"] = {"tensorboard": False, "stdout": False, "jsonl": True}
    for key, value in sections.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return config_from_dict(data)


def test_seed_picks_the_random_models_and_the_rollouts_draws():
    runs = [build_run(tiny(seed=seed), CPU) for seed in (0, 0, 1)]
    weights = [dict(run.policy.model.named_parameters()) for run in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert any(not torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    # the same model and prompts, the trainer's generators seeded from each seed
    prompts = runs[0].prompts.next()
    tokens = []
    for seed in (0, 1):
        trainer = GRPOTrainer(tiny(seed=seed), runs[0].policy, runs[0].idm, runs[0].prompts)
        tokens.append(trainer.policy.rollout(prompts, 4, generator=trainer.rollout_generators(len(prompts))).sample)
    assert not torch.equal(tokens[0].tokens, tokens[1].tokens)


def test_device_places_the_run(tmp_path):
    trainer = GRPOTrainer.from_config(tiny(device="cpu"), out_dir=tmp_path)
    assert trainer.device == CPU and {p.device for p in trainer.params} == {CPU}
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="^device: cuda requested but CUDA is not available$"):
            GRPOTrainer.from_config(tiny(device="cuda"), out_dir=tmp_path)


def test_out_is_where_the_run_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    GRPOTrainer.from_config(tiny(out="runs/here")).close()
    assert (tmp_path / "runs" / "here" / "config.yaml").is_file()


def test_the_random_models_take_their_sizes_from_models_random():
    random = {"image_size": 24, "action_head_sizes": [3, 2],
              "tokenizer": {"patch_size": 4, "hidden_channels": 8, "encoder_blocks": 0, "decoder_blocks": 1,
                            "code_dim": 4, "codebook_size": 16},
              "world_model": {"n_layers": 2, "d_model": 16, "n_heads": 2, "n_kv_heads": 1, "max_frames": 4},
              "idm": {"window": 4, "width": 8, "depth": 1, "heads": 2, "channels": [4, 4]}}
    world_model, tokenizer, idm, _, _ = build_models(tiny(models={"source": "random", "random": random}), CPU)
    assert tokenizer.frame_size == (24, 24) and tokenizer.codebook_size == 16 and tokenizer.config.code_dim == 4
    assert list(world_model.head_sizes) == [3, 2] == list(idm.head_sizes)
    assert (world_model.config.n_layers, world_model.config.d_model, world_model.config.codebook_size) == (2, 16, 16)
    assert (idm.config.width, list(idm.config.channels)) == (8, [4, 4])


def test_synthetic_clips_and_context_frames_shape_the_prompts():
    cfg = tiny(data={"synthetic_clips": 5, "context_frames": 2}, rollout={"n_frames": 2})
    train, heldout, _ = build_datasets(cfg, (16, 16), [5])
    assert len(train) == len(heldout) == 5
    prompts = build_run(cfg, CPU).prompts.next()
    assert prompts.context.shape[1] == 2 and prompts.context_actions.shape[1] == 1
    assert prompts.actions.shape[1] == 2


def test_heldout_fraction_and_stride_cut_the_recording(crafter_recording):
    def datasets(**data):
        cfg = tiny(data={"source": "recording", "path": str(crafter_recording), **data})
        return build_datasets(cfg, (16, 16), [17])

    with pytest.warns(UserWarning, match="no held-out evaluation"):
        everything, none, _ = datasets(heldout_fraction=0.0, stride=1)
    assert none is None
    train, heldout, _ = datasets(heldout_fraction=0.5, stride=1)  # one of the two episodes
    assert len(train) + len(heldout) == len(everything) and len(heldout) > 0
    sparse, _, _ = datasets(heldout_fraction=0.5, stride=4)
    assert len(sparse) == (len(train) + 3) // 4  # a clip starts every 4 frames, not every frame


def test_temperature_reaches_the_sampler_and_the_scorer():
    cold = build_run(tiny(rollout={"temperature": 0.5}), CPU).policy
    warm = build_run(tiny(), CPU).policy
    prompts = build_run(tiny(), CPU).prompts.next()
    rollout = warm.rollout(prompts, 4, generator=torch.Generator().manual_seed(0))
    idx = torch.arange(len(rollout))
    with torch.no_grad():
        assert not torch.allclose(cold.logprobs(rollout, idx), warm.logprobs(rollout, idx))
    entropy = [-p.rollout(prompts, 4, generator=torch.Generator().manual_seed(0)).old_logp.mean()
               for p in (cold, warm)]
    assert entropy[0] < entropy[1]  # colder samples are likelier


def test_noise_level_scales_the_sde_steps_std():
    stds = []
    for level in (0.7, 0.35):
        run = build_run(tiny(TINY_DIFFUSION, rollout={"sde": {"noise_level": level}}), CPU)
        rollout = run.policy.rollout(run.prompts.next(), 2, generator=torch.Generator().manual_seed(0))
        stds.append(rollout.sample.stds)
    torch.testing.assert_close(stds[1], stds[0] / 2)


def test_betas_reach_the_optimizer(tmp_path):
    trainer = GRPOTrainer.from_config(tiny(optim={"betas": [0.8, 0.95]}), out_dir=tmp_path)
    assert {g["betas"] for g in trainer.optimizer.param_groups} == {(0.8, 0.95)}


def test_eval_at_start_false_skips_the_step_0_evaluation(tmp_path):
    trainer = GRPOTrainer.from_config(tiny(eval={"at_start": False}), out_dir=tmp_path)
    trainer.train()
    trainer.close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1]


def test_eval_num_samples_draws_that_many_videos_a_prompt(monkeypatch, tmp_path):
    import rlir.grpo.held_out as held_out_module

    calls = []
    real = held_out_module.held_out_videos

    def spy(*args, **kwargs):
        videos, actions = real(*args, **kwargs)
        calls.append(len(videos))
        return videos, actions

    monkeypatch.setattr(held_out_module, "held_out_videos", spy)
    for samples in (1, 3):
        trainer = GRPOTrainer.from_config(tiny(eval={"num_samples": samples, "prompts": 2}), out_dir=tmp_path)
        trainer.evaluate()
    assert calls == [2, 6]


def test_keep_last_prunes_the_run_s_checkpoints(tmp_path):
    trainer = GRPOTrainer.from_config(tiny(train={"steps": 3, "checkpoint_interval": 1, "keep_last": 2,
                                                  "eval_interval": 0}), out_dir=tmp_path)
    trainer.train()
    trainer.close()
    assert [step for step, _ in list_checkpoints(tmp_path / "checkpoints")] == [2, 3]


def test_the_options_table_names_every_option_and_a_test_that_exists():
    text = (REPO / "docs" / "experiments.md").read_text()
    section = text.split("## Options removed (issue 23)\n")[1].split("\n## ")[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| `")]
    kept = {re.findall(r"`([^`]+)`", row[0])[0]: row[2].strip("`") for row in rows if "::" in row[2]}
    removed = {key for row in rows if "::" not in row[2] for key in re.findall(r"`([^`]+)`", row[0])}
    assert list(kept) == list(config_keys(GRPOConfig))
    assert removed == set(REMOVED_KEYS)
    for test in kept.values():
        path, name = test.split("::")
        assert re.search(rf"^def {name}\(", (REPO / "tests" / path).read_text(), re.M), test
