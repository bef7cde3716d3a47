"""rlir.integrations.trl: a patched GRPOTrainer gives TRL's own loss, gradients and metrics.

Everything runs offline on CPU: a 2-layer Llama with hidden size 32 and a 100-token word-level tokenizer
are built here and saved to a temporary folder (GRPOTrainer loads its reference model from a path), so
a real GRPOTrainer is constructed. The equivalence tests hand one fixed batch, laid out as
``_generate_and_score_completions`` lays it out (left-padded prompts, right-padded completions of
different lengths including an empty one, advantages of both signs, off-policy old log-probs that clip
on both sides, reference log-probs), to ``trainer._compute_loss`` twice, once as TRL ships it and once
patched, and compare the loss, every parameter's gradient and the logged metrics. The trainer's
options are set on the instance between calls, which is what ``_compute_loss`` reads.

Tolerance (fp32): loss and metrics rtol 1e-5; gradients rtol 1e-5 with atol 1e-6 x the largest
gradient entry. The two paths differ only by float32 rounding (TRL scores log-probs with its chunked LM
head or a log-softmax, rlir with token_logprobs; rlir's loss is its aggregate times an exact factor).
"""
from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")

from rlir.integrations import trl as rlir_trl  # noqa: E402
from rlir.integrations.trl import (  # noqa: E402
    SUPPORTED_LOSS_TYPES,
    TRLFallbackWarning,
    is_patched,
    patch_grpo_trainer,
    unpatch_grpo_trainer,
)

GRPOTrainer = trl.GRPOTrainer
VOCAB = 100
PAD, EOS = 0, 1
MAX_COMPLETION = 12
RTOL = 1e-5


# ----------------------------------------------------------------------------------------------------------
# a tiny model, tokenizer and trainer, all local


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": PAD, "<eos>": EOS, "<unk>": 2, **{f"t{i}": i for i in range(3, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                                unk_token="<unk>")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The model is tiny: one intra-op thread is ~10x faster than two fighting over a shared CI core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=None,
    )
    path = tmp_path_factory.mktemp("tiny_llama")
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    _tokenizer().save_pretrained(path)
    return str(path)


def _reward(completions, **kwargs):
    return [float(c.count("t7") + c.count("t8")) + len(c) / 100 for c in completions]


def _trainer(model_dir, tmp_path, **overrides):
    from datasets import Dataset

    options = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
        report_to="none", use_cpu=True, save_strategy="no", logging_steps=1, max_steps=1, beta=0.04, seed=0,
        learning_rate=1e-3, gradient_checkpointing=False,
        bf16=False,  # fp32 throughout: GRPOConfig defaults to bf16 autocast
    )
    options.update(overrides)
    dataset = Dataset.from_dict({"prompt": ["t3 t4 t5", "t6 t7", "t9 t10 t11 t12", "t13"] * 4})
    return GRPOTrainer(model=model_dir, reward_funcs=_reward, args=trl.GRPOConfig(**options),
                       train_dataset=dataset, processing_class=_tokenizer())


@pytest.fixture(scope="module")
def trainer(model_dir, tmp_path_factory):
    tr = _trainer(model_dir, tmp_path_factory.mktemp("out"), max_completion_length=MAX_COMPLETION)
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1  # set by Trainer.train(); _compute_loss reads it
    return tr


# The trainer options the tests change; each test starts from the values GRPOTrainer set.
OPTIONS = (
    "loss_type", "importance_sampling_level", "beta", "epsilon_low", "epsilon_high", "args.delta",
    "args.use_bias_correction_kl", "top_entropy_quantile", "off_policy_mask_threshold", "use_vllm",
    "vllm_importance_sampling_correction", "_entropy_bonus_enabled", "current_gradient_accumulation_steps",
)


def _owner(tr, key):
    return (tr.args, key[5:]) if key.startswith("args.") else (tr, key)


@pytest.fixture(scope="module")
def trainer_defaults(trainer):
    return {key: getattr(*_owner(trainer, key)) for key in OPTIONS}


@pytest.fixture(autouse=True)
def _clean_state(request):
    """Every test starts unpatched, with fresh one-time warnings and the trainer's own options."""
    rlir_trl.reset_fallback_warnings()
    uses_trainer = "trainer" in request.fixturenames
    if uses_trainer:
        tr, defaults = request.getfixturevalue("trainer"), request.getfixturevalue("trainer_defaults")
    yield
    unpatch_grpo_trainer(GRPOTrainer)
    if uses_trainer:
        unpatch_grpo_trainer(tr)
        tr.model.train()
        _configure(tr, **defaults)


def _configure(tr, **options):
    for key, value in options.items():
        obj, attr = _owner(tr, key)
        assert hasattr(obj, attr), key
        setattr(obj, attr, value)


# ----------------------------------------------------------------------------------------------------------
# one batch, as GRPOTrainer._generate_and_score_completions hands it to _compute_loss

COMPLETION_LENGTHS = (10, 7, 3, 0, 10, 5)  # row 3 is empty (e.g. a masked truncated completion)
PROMPT_LENGTHS = (5, 3, 4, 5, 2, 5)


def _batch(tr, seed=0, tool_mask=False):
    g = torch.Generator().manual_seed(seed)
    n, p, k = len(COMPLETION_LENGTHS), max(PROMPT_LENGTHS), max(COMPLETION_LENGTHS)
    prompt_ids = torch.full((n, p), PAD)
    prompt_mask = torch.zeros(n, p, dtype=torch.long)
    completion_ids = torch.full((n, k), PAD)
    completion_mask = torch.zeros(n, k, dtype=torch.long)
    for row, (pl, cl) in enumerate(zip(PROMPT_LENGTHS, COMPLETION_LENGTHS, strict=True)):
        prompt_ids[row, p - pl:] = torch.randint(3, VOCAB, (pl,), generator=g)  # left padded
        prompt_mask[row, p - pl:] = 1
        completion_ids[row, :cl] = torch.randint(3, VOCAB, (cl,), generator=g)  # right padded
        completion_mask[row, :cl] = 1
        if 0 < cl < k:
            completion_ids[row, cl - 1] = EOS
    batch = dict(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                 completion_mask=completion_mask)
    batch["advantages"] = torch.tensor([1.3, -0.7, 0.4, 0.9, -1.1, 0.0])
    # Old/reference log-probs: TRL's own scoring of this batch, perturbed so ratios leave the clip range.
    input_ids = torch.cat([prompt_ids, completion_ids], 1)
    attention_mask = torch.cat([prompt_mask, completion_mask], 1)
    with torch.no_grad():
        logps = GRPOTrainer._get_per_token_logps_and_entropies(tr, tr.model, input_ids, attention_mask, k)[0]
    valid = completion_mask.bool()
    batch["old_per_token_logps"] = torch.where(valid, logps + 0.35 * torch.randn(n, k, generator=g), 0.0)
    batch["ref_per_token_logps"] = torch.where(valid, logps + 0.25 * torch.randn(n, k, generator=g), 0.0)
    batch["num_items_in_batch"] = completion_mask.sum() * 3.0  # as if the generation batch had 3 such
    if tool_mask:
        tm = torch.ones(n, k, dtype=torch.long)
        tm[0, 2:5] = 0
        tm[4, 6:] = 0
        batch["tool_mask"] = tm
    return batch


def _run(tr, batch, patched: bool, fallback: bool = False):
    """Loss, parameter gradients and logged metrics of one _compute_loss call.

    Patched without ``fallback``, a TRLFallbackWarning is an error: rlir's kernels must have run."""
    model = tr.model
    model.zero_grad(set_to_none=True)
    mode = "train" if model.training else "eval"
    tr._metrics["train"].clear()
    tr._metrics["eval"].clear()
    with patch_grpo_trainer(tr) if patched else contextlib.nullcontext(), warnings.catch_warnings():
        if patched:
            assert is_patched(tr) and is_patched(tr, "_get_per_token_logps_and_entropies")
            if not fallback:
                warnings.simplefilter("error", TRLFallbackWarning)
        loss = tr._compute_loss(model, batch)
        loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    metrics = {key: list(values) for key, values in tr._metrics[mode].items()}
    return loss.detach(), grads, metrics


def _assert_same(reference, patched):
    (loss_a, grads_a, metrics_a), (loss_b, grads_b, metrics_b) = reference, patched
    torch.testing.assert_close(loss_b, loss_a, rtol=RTOL, atol=1e-7)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    scale = max(g.abs().max().item() for g in grads_a.values())
    assert scale > 0
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=RTOL, atol=1e-6 * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")
    assert list(metrics_b) == list(metrics_a)
    for key in metrics_a:
        torch.testing.assert_close(torch.tensor(metrics_b[key], dtype=torch.float64),
                                   torch.tensor(metrics_a[key], dtype=torch.float64),
                                   rtol=RTOL, atol=1e-7, equal_nan=True, msg=lambda m, key=key: f"{key}: {m}")


# ----------------------------------------------------------------------------------------------------------
# equivalence


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", SUPPORTED_LOSS_TYPES)
def test_matches_trl(trainer, loss_type, level, beta):
    # With beta != 0, TRL's default use_bias_correction_kl=True weights the KL by the ratio, which
    # grpo_loss does not do (that configuration falls back, see test_fallbacks_warn_once_and_match_trl).
    _configure(trainer, loss_type=loss_type, importance_sampling_level=level, beta=beta,
               current_gradient_accumulation_steps=2, **{"args.use_bias_correction_kl": beta == 0})
    batch = _batch(trainer)
    reference = _run(trainer, batch, patched=False)
    patched = _run(trainer, batch, patched=True)
    _assert_same(reference, patched)
    metrics = patched[2]
    assert ("kl" in metrics) == (beta != 0)
    if level == "token":  # the batch really exercises both clip sides
        assert metrics["clip_ratio/low_mean"][0] > 0 and metrics["clip_ratio/high_mean"][0] > 0


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("options", [
    dict(epsilon_high=0.28, **{"args.delta": 1.5}),  # DAPO-style asymmetric clip + two-sided cap
    dict(epsilon_low=0.1, epsilon_high=0.3, **{"args.delta": 1.2}),  # cap below 1 + eps_high
    dict(importance_sampling_level="sequence", **{"args.delta": 1.05}),
], ids=["delta1.5", "delta-below-clip", "sequence-delta"])
def test_matches_trl_clipping_options(trainer, loss_type, options):
    _configure(trainer, loss_type=loss_type, **{"args.use_bias_correction_kl": False}, **options)
    batch = _batch(trainer, seed=1)
    _assert_same(_run(trainer, batch, patched=False), _run(trainer, batch, patched=True))


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "luspo"])
def test_matches_trl_tool_mask_and_on_policy(trainer, loss_type):
    """tool_mask narrows the loss mask; old_per_token_logps=None means ratio 1 (on-policy)."""
    _configure(trainer, loss_type=loss_type, **{"args.use_bias_correction_kl": False})
    batch = _batch(trainer, seed=2, tool_mask=True)
    _assert_same(_run(trainer, batch, patched=False), _run(trainer, batch, patched=True))
    del batch["old_per_token_logps"]
    _assert_same(_run(trainer, batch, patched=False), _run(trainer, batch, patched=True))


@pytest.mark.parametrize("loss_type", ["bnpo", "dapo"])
def test_matches_trl_eval_mode(trainer, loss_type):
    """Evaluation: no gradient-accumulation scaling, metrics logged under "eval"."""
    _configure(trainer, loss_type=loss_type, current_gradient_accumulation_steps=4,
               **{"args.use_bias_correction_kl": False})
    trainer.model.eval()
    batch = _batch(trainer, seed=3)
    reference, patched = _run(trainer, batch, patched=False), _run(trainer, batch, patched=True)
    _assert_same(reference, patched)
    assert "entropy" in patched[2] and not trainer._metrics["train"]


def test_logprobs_match_trl(trainer):
    batch = _batch(trainer)
    args = (torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1),
            torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1), batch["completion_ids"].size(1))
    ref_logps, ref_ent, _ = GRPOTrainer._get_per_token_logps_and_entropies(
        trainer, trainer.model, *args, batch_size=4, compute_entropy=True)
    with patch_grpo_trainer(trainer, loss=False):
        logps, ent, aux = trainer._get_per_token_logps_and_entropies(
            trainer.model, *args, batch_size=4, compute_entropy=True)
        only_logps, no_ent, _ = trainer._get_per_token_logps_and_entropies(trainer.model, *args)
    assert aux is None and no_ent is None
    scored = args[1][:, -args[2]:].bool()
    # TRL >= 1.15 reports 0 at unattended positions (its fused LM head skips them), older TRL their
    # log-probs; rlir always reports 0. The loss masks them either way.
    torch.testing.assert_close(logps[scored], ref_logps[scored], rtol=RTOL, atol=1e-6)
    torch.testing.assert_close(ent[scored], ref_ent.detach()[scored], rtol=RTOL, atol=1e-6)
    torch.testing.assert_close(only_logps, logps)
    assert (~scored).any() and (logps[~scored] == 0).all() and (ent[~scored] == 0).all()


@pytest.mark.interpreter
@pytest.mark.parametrize("loss_type, level", [("grpo", "sequence"), ("dapo", "token")])
def test_matches_trl_triton_kernels(trainer, loss_type, level, monkeypatch):
    """The Triton kernels (interpreted on CPU tensors) behind the patch give TRL's results too."""
    monkeypatch.setenv("RLIR_KERNELS", "triton")
    _configure(trainer, loss_type=loss_type, importance_sampling_level=level,
               **{"args.delta": 1.6, "args.use_bias_correction_kl": False})
    batch = _batch(trainer, seed=4)
    _assert_same(_run(trainer, batch, patched=False), _run(trainer, batch, patched=True))


# ----------------------------------------------------------------------------------------------------------
# fallbacks


def _fallback_cases(tr, batch):
    n, k = batch["completion_ids"].shape
    per_token_adv = batch["advantages"][:, None].expand(n, k).clone()
    return [
        ("loss_type='cispo'", dict(loss_type="cispo"), {}),
        ("loss_type='sapo'", dict(loss_type="sapo"), {}),
        ("top_entropy_quantile=0.5", dict(top_entropy_quantile=0.5), {}),
        ("off_policy_mask_threshold=0.5", dict(off_policy_mask_threshold=0.5), {}),
        ("entropy bonus", dict(_entropy_bonus_enabled=True), {}),
        ("vllm_importance_sampling_correction", dict(use_vllm=True),
         {"importance_sampling_ratio": torch.full((n, k), 0.9)}),
        ("use_bias_correction_kl", {"args.use_bias_correction_kl": True}, {}),  # TRL's default, with beta
        ("delta=1.0", {"args.delta": 1.0}, {}),
        ("per-token advantages", {}, {"advantages": per_token_adv}),
    ]


def test_fallbacks_warn_once_and_match_trl(trainer, trainer_defaults):
    base = _batch(trainer, seed=5)
    for label, options, batch_changes in _fallback_cases(trainer, base):
        _configure(trainer, **trainer_defaults)
        _configure(trainer, **{"args.use_bias_correction_kl": False, **options})
        batch = {**base, **batch_changes}
        reference = _run(trainer, batch, patched=False)
        with pytest.warns(TRLFallbackWarning) as record:
            patched = _run(trainer, batch, patched=True, fallback=True)
        messages = [str(w.message) for w in record if issubclass(w.category, TRLFallbackWarning)]
        assert len(messages) == 1 and "_compute_loss" in messages[0], (label, messages)
        assert label.split("=")[0].split(" ")[0] in messages[0], (label, messages)
        # TRL's own loss ran (on rlir's log-probs, which match TRL's to fp32 rounding).
        _assert_same(reference, patched)
        with warnings.catch_warnings():
            warnings.simplefilter("error", TRLFallbackWarning)
            _run(trainer, batch, patched=True, fallback=True)  # warned once only


def test_logprobs_fallback_for_extra_inputs(trainer):
    batch = _batch(trainer)
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    k = batch["completion_ids"].size(1)
    token_type_ids = torch.zeros_like(input_ids)
    with patch_grpo_trainer(trainer, loss=False), pytest.warns(TRLFallbackWarning, match="token_type_ids"):
        logps = trainer._get_per_token_logps_and_entropies(
            trainer.model, input_ids, attention_mask, k, token_type_ids=token_type_ids)[0]
    expected = GRPOTrainer._get_per_token_logps_and_entropies(
        trainer, trainer.model, input_ids, attention_mask, k, token_type_ids=token_type_ids)[0]
    torch.testing.assert_close(logps, expected)


# ----------------------------------------------------------------------------------------------------------
# patching mechanics


def test_patch_class_context_and_unpatch(trainer):
    own_loss = GRPOTrainer.__dict__["_compute_loss"]
    own_logps = GRPOTrainer.__dict__["_get_per_token_logps_and_entropies"]
    with patch_grpo_trainer() as handle:  # None -> GRPOTrainer
        assert sorted(handle.methods) == ["_compute_loss", "_get_per_token_logps_and_entropies"]
        assert is_patched(GRPOTrainer) and is_patched(trainer)
        again = patch_grpo_trainer(GRPOTrainer)  # idempotent
        assert again.methods == [] and set(again.skipped.values()) == {"already patched"}
        assert patch_grpo_trainer(trainer).methods == []  # the instance already runs the patched class
    assert GRPOTrainer.__dict__["_compute_loss"] is own_loss
    assert GRPOTrainer.__dict__["_get_per_token_logps_and_entropies"] is own_logps
    assert not is_patched(trainer)

    patch_grpo_trainer(GRPOTrainer, logprobs=False)
    assert is_patched(GRPOTrainer) and not is_patched(GRPOTrainer, "_get_per_token_logps_and_entropies")
    assert unpatch_grpo_trainer(GRPOTrainer) and not unpatch_grpo_trainer(GRPOTrainer)
    assert GRPOTrainer.__dict__["_compute_loss"] is own_loss


def test_patch_instance_only(trainer, model_dir, tmp_path):
    handle = patch_grpo_trainer(trainer)
    assert is_patched(trainer) and not is_patched(GRPOTrainer)
    handle.unpatch()
    assert not is_patched(trainer) and "_compute_loss" not in vars(trainer)


def test_subclass_override_is_left_alone():
    class Custom(GRPOTrainer):
        def _compute_loss(self, model, inputs):
            return super()._compute_loss(model, inputs) * 2

    with pytest.warns(UserWarning, match="Custom._compute_loss is not TRL's own method"):
        handle = patch_grpo_trainer(Custom)
    assert handle.methods == ["_get_per_token_logps_and_entropies"] and "_compute_loss" in handle.skipped
    handle.unpatch()
    assert "_get_per_token_logps_and_entropies" not in vars(Custom)


def test_rejects_non_trainers():
    with pytest.raises(TypeError):
        patch_grpo_trainer(object)


def test_trl_version_gate(monkeypatch):
    monkeypatch.setattr(trl, "__version__", "1.9.2")
    with pytest.raises(RuntimeError, match="TRL >= 1.10"):
        patch_grpo_trainer()
    monkeypatch.setattr(trl, "__version__", "1.99.0")
    with pytest.warns(UserWarning, match="verified against TRL 1.10 to 1.16"):
        patch_grpo_trainer().unpatch()


# ----------------------------------------------------------------------------------------------------------
# end to end: GRPOTrainer.train() with generation, old/ref log-probs, accumulation and logging


def _train_logs(model_dir, tmp_path, patched):
    tr = _trainer(model_dir, tmp_path, loss_type="grpo", gradient_accumulation_steps=2, num_iterations=2,
                  max_steps=2, use_bias_correction_kl=False)
    with patch_grpo_trainer(tr) if patched else contextlib.nullcontext(), warnings.catch_warnings():
        warnings.simplefilter("error", TRLFallbackWarning)
        tr.train()
    return [log for log in tr.state.log_history if "loss" in log]


def test_train_end_to_end_matches_trl(model_dir, tmp_path):
    reference = _train_logs(model_dir, tmp_path / "trl", patched=False)
    patched = _train_logs(model_dir, tmp_path / "rlir", patched=True)
    assert len(patched) == len(reference) == 2
    for ref_log, log in zip(reference, patched, strict=True):
        assert log.keys() == ref_log.keys()
        assert {"loss", "grad_norm", "kl", "entropy", "clip_ratio/region_mean", "clip_ratio/high_max"} <= log.keys()
        for key in log.keys() - {"step_time"}:
            assert log[key] == pytest.approx(ref_log[key], rel=1e-4, abs=1e-6), key
    assert reference[0]["grad_norm"] > 0
