"""Cases that kill mutants of rlir/grpo/trainer.py which the GRPO tests let through (docs/mutation.md): the
configured options reaching the reward, the advantages, the loss and the optimizer step; the phases a step
times; its throughput metrics; train()'s log lines, history and final checkpoint; from_config's models,
out directory and resume message; checkpoints saved and loaded through the trainer; the skipped-update warning;
the closed-form KL's sign and normaliser."""
import json
import re
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import rlir.grpo.advantages as advantages_module
import rlir.grpo.trainer as trainer_module
from rlir.grpo import GRPOTrainer, config_from_dict
from rlir.grpo.advantages import frame_advantages
from rlir.grpo.config import ConfigError
from rlir.grpo.logging import read_metrics
from rlir.kernels import group_advantage

REPO = Path(__file__).resolve().parents[2]
TINY = {kind: REPO / "configs" / f"tiny_{kind}.yaml" for kind in ("ar", "diffusion")}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def tiny(kind="ar", **sections):
    data = yaml.safe_load(TINY[kind].read_text())
    data["log"] = {"tensorboard": False, "stdout": False, "jsonl": True}
    data["reward"]["mode"] = "loglik"  # a dense reward: every group has a learning signal
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return data


def spy(monkeypatch, name, module=trainer_module):
    """Wrap <module>.<name> so that every call's arguments are recorded (the real function still runs)."""
    real, calls = getattr(module, name), []

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


# ---- the configured options reach the parts of a step -------------------------------------------------------

LOSS = {"eps_low": 0.15, "eps_high": 0.3, "delta": 3.0, "loss_agg": "seq-mean-token-mean", "is_level": "sequence",
        "beta": 0.05, "kl": "k3"}


def test_a_step_hands_the_configured_loss_options_to_grpo_loss_and_the_normaliser(monkeypatch, tmp_path):
    losses, normalisers = spy(monkeypatch, "grpo_loss"), spy(monkeypatch, "loss_normaliser")
    clips = spy(monkeypatch, "clip_and_step")
    trainer = GRPOTrainer.from_config(config_from_dict(tiny(loss=LOSS, optim={"max_grad_norm": 0.5})),
                                      out_dir=tmp_path)
    m = trainer.step()
    assert m["adv/abs_max"] > 0 and m["optim/grad_norm"] > 0
    assert len(losses) == 2 * 4  # 2 inner epochs x 4 micro-batches of 2 of the 8 videos
    for args, kwargs in losses:
        logp, old, adv, mask, ref = args
        assert mask.dtype == torch.bool and mask.shape == logp.shape and ref is not None
        assert {k: kwargs[k] for k in ("eps_low", "eps_high", "delta", "loss_agg", "is_level", "beta")} == \
            {k: LOSS[k] for k in ("eps_low", "eps_high", "delta", "loss_agg", "is_level", "beta")}
        assert isinstance(kwargs["normaliser"], torch.Tensor)
    assert normalisers and all(args[1] == "seq-mean-token-mean" for args, _ in normalisers)
    assert clips and all(args[2] == 0.5 and args[3] is trainer.fused_adamw for args, _ in clips)


def test_video_credit_hands_mode_scale_and_estimator_to_the_kernels(monkeypatch, tmp_path):
    rewards, groups = spy(monkeypatch, "idm_reward", advantages_module), spy(monkeypatch, "group_advantage",
                                                                             advantages_module)
    cfg = tiny(advantage={"scale": "none", "estimator": "rloo"})
    GRPOTrainer.from_config(config_from_dict(cfg), out_dir=tmp_path).step()
    (_, kwargs), = rewards
    assert kwargs["mode"] == "loglik"
    (args, kwargs), = groups
    assert args[0].shape == (8,)  # one reward per video
    assert {k: kwargs[k] for k in ("scale", "estimator", "group_size")} == \
        {"scale": "none", "estimator": "rloo", "group_size": 4}


def test_frame_credit_scores_with_the_configured_reward_mode(monkeypatch, tmp_path):
    calls = spy(monkeypatch, "idm_reward", advantages_module)
    m = GRPOTrainer.from_config(config_from_dict(tiny(advantage={"credit": "frame"})), out_dir=tmp_path).step()
    assert [kwargs["mode"] for _, kwargs in calls] == ["loglik"]
    assert m["reward/mean"] < 0  # a log-likelihood, not a match fraction


@pytest.mark.parametrize("options", [{"scale": "none", "estimator": "rloo"}, {"scale": "group", "estimator": "grpo"}])
def test_frame_advantages_follow_the_configured_estimator(tmp_path, options):
    trainer = GRPOTrainer.from_config(config_from_dict(tiny(advantage={"credit": "frame", **options})),
                                      out_dir=tmp_path)
    rollout = trainer.policy.rollout(trainer.prompts.next(), 4, generator=torch.Generator().manual_seed(0))
    match = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0],
                          [0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    adv = frame_advantages(match, rollout, trainer.cfg.advantage, policy_name="ARPolicy")
    by_frame = group_advantage(match.t().reshape(-1), group_size=4, **options).view(3, 8).t()
    torch.testing.assert_close(adv, by_frame[:, rollout.slot_frame])


def test_frame_credit_without_slot_frames_names_the_policy(tmp_path, monkeypatch):
    trainer = GRPOTrainer.from_config(config_from_dict(tiny(advantage={"credit": "frame"})), out_dir=tmp_path)
    rollout = trainer.policy.rollout

    def without_slot_frames(*args, **kwargs):
        out = rollout(*args, **kwargs)
        out.slot_frame = None
        return out

    monkeypatch.setattr(trainer.policy, "rollout", without_slot_frames)
    with pytest.raises(ConfigError) as err:
        trainer.step()
    assert str(err.value) == ("advantage.credit: 'frame' needs Rollout.slot_frame, which ARPolicy.rollout does "
                              "not set")


# ---- what a step measures ------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss,extra", [({}, {"logprob_ref"}),
                                        ({"old_logprobs": "recompute"}, {"logprob_old", "logprob_ref"}),
                                        ({"beta": 0.0}, set())])
def test_a_step_times_its_phases_under_their_documented_names(tmp_path, loss, extra):
    trainer = GRPOTrainer.from_config(config_from_dict(tiny(loss=loss)), out_dir=tmp_path)
    m = trainer.step()
    phases = {"data", "rollout", "decode", "reward", "advantage", "logprob", "loss", "backward", "optim"} | extra
    assert set(trainer._last_phases) == phases
    assert {k for k in m if k.startswith("time/")} == {"time/step"} | {f"time/{p}" for p in phases}


def test_throughput_is_the_step_s_videos_and_frames_over_its_wall_time(tmp_path):
    trainer = GRPOTrainer.from_config(config_from_dict(tiny()), out_dir=tmp_path)
    m = trainer.step()
    videos, frames = 2 * 4, 3
    assert 0 < m["time/step"] < 600
    assert m["time/step"] >= sum(trainer._last_phases.values()) * 0.99
    assert m["perf/videos_per_s"] == pytest.approx(videos / m["time/step"])
    assert m["perf/frames_per_s"] == pytest.approx(videos * frames / m["time/step"])


def test_a_non_finite_gradient_skips_the_update_and_warns_with_the_step(tmp_path):
    trainer = GRPOTrainer.from_config(config_from_dict(tiny(loss={"beta": 0.0})), out_dir=tmp_path)
    trainer.policy.model.output.weight.register_hook(lambda grad: grad * float("nan"))
    with pytest.warns(UserWarning) as caught:
        m = trainer.step()
    messages = [str(w.message) for w in caught if "non-finite" in str(w.message)]
    assert m["optim/skipped_updates"] == 4
    assert messages == ["step 1: non-finite gradient norm; update skipped"] * 4


# ---- train(): log lines, history, the final checkpoint -------------------------------------------------------

def test_train_logs_the_start_evaluation_then_every_log_interval_and_the_last_step(tmp_path, capsys):
    cfg = tiny(train={"steps": 3, "log_interval": 2, "eval_interval": 5, "checkpoint_interval": 2})
    cfg["log"]["stdout"] = True
    trainer = GRPOTrainer.from_config(config_from_dict(cfg), out_dir=tmp_path)
    ran = trainer.train()
    trainer.close()
    lines = capsys.readouterr().out.splitlines()
    start = next(line for line in lines if line.startswith("eval step"))
    em = read_metrics(tmp_path / "metrics.jsonl")[0]
    assert em["step"] == 0
    assert start == "eval step 0 | " + " ".join(f"{k} {em[k]:.4f}" for k in em if k not in ("step", "time"))
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 2, 3]
    assert trainer.history == ran and len(ran) == 3 and all(isinstance(m, dict) for m in ran)
    # checkpoints at the interval and at the end, each once
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()) == ["step_00000002",
                                                                                         "step_00000003"]


def test_train_saves_once_when_the_last_step_is_a_checkpoint_step(tmp_path, monkeypatch):
    trainer = GRPOTrainer.from_config(config_from_dict(tiny(train={"steps": 2, "checkpoint_interval": 2})),
                                      out_dir=tmp_path)
    saves = []
    real = trainer.save_checkpoint
    monkeypatch.setattr(trainer, "save_checkpoint", lambda: saves.append(trainer.step_count) or real())
    trainer.train()
    assert saves == [2]


def test_close_closes_the_metrics_file(tmp_path):
    trainer = GRPOTrainer.from_config(config_from_dict(tiny()), out_dir=tmp_path)
    logger = trainer.logger
    trainer.close()
    assert logger._jsonl is None
    trainer.logger = None
    trainer.close()  # no logger: nothing to close


# ---- from_config and the trainer's checkpoints ------------------------------------------------------------------

def test_from_config_makes_a_nested_out_directory(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    GRPOTrainer.from_config(config_from_dict(tiny()), out_dir=out).close()
    assert (out / "config.yaml").is_file()


def test_resume_without_a_checkpoint_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"^--resume: no checkpoint under {re.escape(str(tmp_path / 'checkpoints'))}$"):
        GRPOTrainer.from_config(config_from_dict(tiny()), out_dir=tmp_path, resume=True)


def test_from_config_passes_the_eval_idm_the_head_names_and_the_device(crafter_recording, tmp_path):
    shipped = REPO / "checkpoints" / "crafter"
    cfg = tiny(models={"source": "pretrained", "kind": "ar", "world_model": str(shipped / "ar_world_model"),
                       "tokenizer": str(shipped / "tokenizer"), "idm": str(shipped / "idm"),
                       "eval_idm": str(shipped / "eval_idm")},
               data={"source": "recording", "path": str(crafter_recording), "heldout_fraction": 0.5},
               rollout={"prompts_per_step": 1, "group_size": 2, "n_frames": 1},
               train={"micro_batch_size": 1})
    trainer = GRPOTrainer.from_config(config_from_dict(cfg), out_dir=tmp_path)
    assert trainer.eval_idm is not None and not any(p.requires_grad for p in trainer.eval_idm.parameters())
    assert trainer.head_names == ["action"] and trainer.device == torch.device("cpu")
    assert "reward/head_acc/action" in trainer.step()
    assert {"eval_idm/reward_mean", "eval_idm/head_acc/action"} <= set(trainer.evaluate())


def test_a_checkpoint_saved_to_a_folder_loads_into_a_fresh_trainer(tmp_path):
    cfg = config_from_dict(tiny())
    trainer = GRPOTrainer.from_config(cfg, out_dir=tmp_path / "run")
    trainer.step()
    path = trainer.save_checkpoint(tmp_path / "elsewhere")
    assert path.parent == tmp_path / "elsewhere" and not (tmp_path / "run" / "checkpoints").exists()
    state = trainer.trainer_state()
    assert state["step"] == 1
    fresh = GRPOTrainer.from_config(cfg, out_dir=tmp_path / "fresh")
    assert fresh.load_checkpoint(path) == 1 and fresh.step_count == 1
    for (k, v), (k2, v2) in zip(trainer.policy.state_dict().items(), fresh.policy.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


# ---- the closed-form KL ----------------------------------------------------------------------------------------

def test_the_closed_form_kl_adds_beta_times_its_token_mean_to_the_loss(tmp_path, monkeypatch):
    """The DiT's closed-form KL against a reference that differs from the policy from the first update: the loss
    with beta is the loss without it plus beta x the KL, normalised by the minibatch's tokens (two micro-batches
    a minibatch)."""
    def run(beta):
        cfg = tiny("diffusion", loss={"beta": beta, "kl": "closed_form"},
                   train={"inner_epochs": 1, "micro_batch_size": 4, "grad_accumulation": 2})
        trainer = GRPOTrainer.from_config(config_from_dict(cfg), out_dir=tmp_path / f"beta{beta}")
        reference = trainer.policy.reference_model()
        with torch.no_grad():
            for p in reference.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        return trainer.step()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain, with_kl = run(1e-9), run(2.0)
    assert with_kl["loss/kl"] > 1e-4
    assert with_kl["loss/kl"] == pytest.approx(plain["loss/kl"], rel=1e-6)
    assert with_kl["loss/loss"] - plain["loss/loss"] == pytest.approx(2.0 * with_kl["loss/kl"], rel=1e-3)


# ---- the constructor -------------------------------------------------------------------------------------------

def test_the_closed_form_kl_needs_beta_and_a_policy_that_has_it(tmp_path):
    # The config refuses closed_form with models.kind ar; a trainer built by hand with another policy checks it.
    built = GRPOTrainer.from_config(config_from_dict(tiny()), out_dir=tmp_path)
    no_kl = GRPOTrainer(config_from_dict(tiny("diffusion", loss={"beta": 0.0, "kl": "closed_form"})), built.policy,
                        built.idm, built.prompts)  # beta 0: no KL term, so a policy without the closed form is fine
    assert no_kl.closed_form_kl is False
    cfg = config_from_dict(tiny("diffusion", loss={"beta": 0.1, "kl": "closed_form"}))
    with pytest.raises(ConfigError) as err:
        GRPOTrainer(cfg, built.policy, built.idm, built.prompts)
    assert str(err.value) == ("loss.kl: 'closed_form' needs a policy with logprobs_and_kl, which ARPolicy does not "
                              "implement: use k3")


def test_a_trainer_built_by_hand_keeps_its_out_dir_head_names_and_frozen_idms(tmp_path):
    built = GRPOTrainer.from_config(config_from_dict(tiny()), out_dir=tmp_path / "built")
    assert built.save_checkpoint().parent == tmp_path / "built" / "checkpoints"

    class NextOnly:  # a prompt source without next_shard: enough on one process
        def __init__(self, sampler):
            self.sampler = sampler

        def next(self):
            return self.sampler.next()

    idm = built.idm.requires_grad_(True)
    trainer = GRPOTrainer(built.cfg, built.policy, idm, NextOnly(built.prompts), out_dir=str(tmp_path / "mine"),
                          head_names=("steer",))
    assert trainer.out_dir == tmp_path / "mine" and trainer.head_names == ["steer"]
    assert not any(p.requires_grad for p in idm.parameters())
    assert "reward/head_acc/steer" in trainer.step()


def test_bf16_autocast_only_on_cuda_and_only_when_asked_or_supported(tmp_path):
    """The flag is decided at construction from the device and train.bf16; a CUDA device can be named without
    using it (nothing runs here), and this CPU build reports no bf16 support for 'auto'."""
    built = GRPOTrainer.from_config(config_from_dict(tiny()), out_dir=tmp_path)
    assert torch.cuda.is_bf16_supported() is False
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for device, setting, expected in ((cuda, "true", True), (cuda, "auto", False), (cuda, "false", False),
                                      (cpu, "true", False), (cpu, "auto", False)):
        cfg = config_from_dict({**tiny(train={"bf16": setting}), "device": "auto"})
        trainer = GRPOTrainer(cfg, built.policy, built.idm, built.prompts, device=device)
        assert trainer.bf16 is expected, (device, setting)


def test_on_two_ranks_the_prompt_source_needs_next_shard_and_the_batch_must_split(tmp_path):
    from rlir.parallel import Parallel

    built = GRPOTrainer.from_config(config_from_dict(tiny()), out_dir=tmp_path)

    class NextOnly:
        def next(self):
            return built.prompts.next()

    two_ranks = Parallel(rank=0, world_size=2, local_rank=0)
    with pytest.raises(ConfigError) as err:
        GRPOTrainer(built.cfg, built.policy, built.idm, NextOnly(), parallel=two_ranks)
    assert str(err.value) == ("parallel: NextOnly has no next_shard(rank, world_size): the prompt sampler must hand "
                              "each rank its share of the global batch")
    with pytest.raises(ConfigError, match=r"^rollout\.prompts_per_step: 3 prompts do not split over 2 ranks"):
        GRPOTrainer(config_from_dict(tiny(rollout={"prompts_per_step": 3})), built.policy, built.idm, built.prompts,
                    parallel=two_ranks)


def test_the_log_options_choose_where_metrics_go(tmp_path, capsys):
    cfg = tiny()
    cfg["log"] = {"jsonl": False, "tensorboard": False, "stdout": False}
    trainer = GRPOTrainer.from_config(config_from_dict(cfg), out_dir=tmp_path / "quiet")
    trainer.train()
    trainer.close()
    assert capsys.readouterr().out == ""
    assert sorted(p.name for p in (tmp_path / "quiet").iterdir()) == ["checkpoints", "config.yaml"]
    cfg["log"] = {"jsonl": True, "tensorboard": True, "stdout": True}
    trainer = GRPOTrainer.from_config(config_from_dict(cfg), out_dir=tmp_path / "loud")
    trainer.train()
    trainer.close()
    assert "step 1/1 |" in capsys.readouterr().out
    assert {"metrics.jsonl", "tb"} <= {p.name for p in (tmp_path / "loud").iterdir()}


def test_a_trainer_built_with_resume_step_drops_the_lines_logged_after_it(tmp_path):
    built = GRPOTrainer.from_config(config_from_dict(tiny()), out_dir=tmp_path / "built")
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward/mean": 0.1 * s}) + "\n"
                                               for s in range(4)))
    trainer = GRPOTrainer(built.cfg, built.policy, built.idm, built.prompts, out_dir=out, resume_step=1)
    trainer.close()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [0, 1]


def test_the_optimizer_takes_the_configured_adam_eps_and_a_frozen_policy_is_refused(tmp_path):
    trainer = GRPOTrainer.from_config(config_from_dict(tiny(optim={"adam_eps": 1e-5})), out_dir=tmp_path)
    assert {g["eps"] for g in trainer.optimizer.param_groups} == {1e-5}
    trainer.policy.model.requires_grad_(False)
    with pytest.raises(ValueError, match="^the policy has no trainable parameters$"):
        GRPOTrainer(trainer.cfg, trainer.policy, trainer.idm, trainer.prompts)
