import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

import rlir.cli
from rlir.data import Recording, resize_frames
from rlir.models import ARWorldModel
from rlir.models.tokenizer import VQTokenizer
from rlir.pretrain.tokenized import TokenizedRecording
from rlir.pretrain.world_model import train

TINY_MODEL = ["--layers", "1", "--d-model", "32", "--heads", "2", "--kv-heads", "1", "--max-frames", "6",
              "--clip-frames", "4", "--eval-frames", "5", "--eval-prompts", "2", "--batch", "2"]


def _tiny_tokenizer(seed: int = 0) -> VQTokenizer:
    torch.manual_seed(seed)
    return VQTokenizer(hidden_channels=16, encoder_blocks=0, decoder_blocks=0, code_dim=8, codebook_size=32).eval()


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    """A randomly initialised tokenizer: the world-model pipeline does not care how good its codes are."""
    out = tmp_path_factory.mktemp("tokenizer")
    _tiny_tokenizer().save_pretrained(out)
    return out


def test_tokenized_cache_round_trip(tiny_recording, tmp_path, monkeypatch):
    recording = Recording(tiny_recording)
    tokenizer = _tiny_tokenizer()
    built = TokenizedRecording.build(recording, tokenizer, batch=7)  # several encode batches per episode
    frames, actions = recording.load_episode("ep00000")
    assert built.codes["ep00000"].shape == (len(frames), 64) and built.codes["ep00000"].dtype == torch.int64
    # The recording is 72x72 and this tokenizer reads 64x64: frames are resized to the tokenizer's size.
    expected = tokenizer.encode(torch.from_numpy(resize_frames(frames, (64, 64))).permute(0, 3, 1, 2)).flatten(1)
    assert torch.equal(built.codes["ep00000"], expected)
    assert torch.equal(built.actions["ep00000"], torch.from_numpy(actions.copy()))

    path = tmp_path / "codes.safetensors"
    built.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["codes.safetensors"]  # no temporary file left behind
    with safe_open(path, framework="pt") as handle:
        assert handle.get_tensor("codes/ep00000").dtype == torch.int16
    loaded = TokenizedRecording.load(path)
    assert loaded.episode_ids == built.episode_ids == ["ep00000", "ep00001"]
    assert loaded.codebook_size == 32 and loaded.tokens_per_frame == 64 and loaded.fingerprint == built.fingerprint
    for episode in built.episode_ids:
        assert torch.equal(loaded.codes[episode], built.codes[episode])
        assert torch.equal(loaded.actions[episode], built.actions[episode])

    windows = loaded.windows(["ep00001"], frames=4, stride=3)
    assert windows[:2] == [("ep00001", 0), ("ep00001", 3)] and windows[-1][1] + 4 <= len(loaded.codes["ep00001"])
    codes, clip_actions = loaded.clips(windows[1:3], frames=4)
    assert codes.shape == (2, 4, 64) and clip_actions.shape == (2, 3, 1)
    assert torch.equal(codes[0], loaded.codes["ep00001"][3:7])

    # A matching cache is reused; other tokenizer weights make it stale and it is rebuilt.
    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt a matching cache")

    with monkeypatch.context() as patch:
        patch.setattr(TokenizedRecording, "build", classmethod(no_build))
        assert TokenizedRecording.load_or_build(path, recording, tokenizer).fingerprint == built.fingerprint
    other = TokenizedRecording.load_or_build(path, recording, _tiny_tokenizer(seed=1))
    assert other.fingerprint != built.fingerprint

    foreign = tmp_path / "foreign.safetensors"
    foreign.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a safetensors file"):
        TokenizedRecording.load(foreign)
    assert TokenizedRecording.load_or_build(foreign, recording, tokenizer).fingerprint == built.fingerprint
    save_file({"x": torch.zeros(1)}, foreign)
    with pytest.raises(ValueError, match="not a pre-tokenised recording"):
        TokenizedRecording.load(foreign)


def test_pretrain_world_model_end_to_end(tiny_recording, tiny_tokenizer, tmp_path, capsys):
    out = tmp_path / "world_model"
    argv = ["pretrain", "world-model", "--kind", "ar", "--data", str(tiny_recording), "--tokenizer",
            str(tiny_tokenizer), "--out", str(out), "--steps", "3", "--log-every", "2", "--eval-every", "2",
            "--threads", "1", "--quiet", *TINY_MODEL]
    assert rlir.cli.main(argv) == 0
    assert "held-out perplexity" in capsys.readouterr().out
    files = {"config.json", "diffusion_pytorch_model.safetensors", "codes.safetensors", "metrics.jsonl",
             "metrics.json", "generations.png"}
    assert {p.name for p in out.iterdir()} == files
    assert [p.name for p in tmp_path.iterdir()] == ["world_model"]  # the staging directory was renamed away

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 2, 3] and "heldout_nll" in lines[1]
    metrics = json.loads((out / "metrics.json").read_text())
    heldout, generation = metrics["heldout"], metrics["heldout"]["generation"]
    assert math.isfinite(heldout["nll"]) and heldout["perplexity"] == pytest.approx(math.exp(heldout["nll"]))
    assert heldout["clips"] == 7 and heldout["tokens"] == 7 * 3 * 64  # one 31-frame held-out episode, 4-frame clips
    assert generation["prompts"] == 2 and generation["generated_frames"] == 5
    for name in ("greedy", "sampled", "copy_context", "tokenizer_ceiling"):
        assert len(generation[name]["psnr_db_per_step"]) == 5 and math.isfinite(generation[name]["psnr_db"])
    assert metrics["model"]["dtype"] == "bf16" and metrics["training"]["steps"] == 3

    with safe_open(out / "diffusion_pytorch_model.safetensors", framework="pt") as handle:
        assert handle.get_tensor("output.weight").dtype == torch.bfloat16
    model = ARWorldModel.from_pretrained(out)
    assert model.config.codebook_size == 32 and model.config.max_frames == 6
    assert model.config.action_head_sizes == [17]

    # Rerunning into a full directory needs --overwrite; then the codes of the previous run are reused.
    assert rlir.cli.main(argv) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    assert rlir.cli.main(argv + ["--overwrite", "--steps", "1"]) == 0
    assert json.loads((out / "metrics.json").read_text())["training"]["steps"] == 1


def test_fused_training_loss_equals_the_logits_path():
    torch.manual_seed(0)
    model = ARWorldModel(codebook_size=50, tokens_per_frame=6, action_head_sizes=[5, 3], n_layers=2, d_model=32,
                         n_heads=4, n_kv_heads=2, max_frames=5)
    frames = torch.randint(0, 50, (3, 4, 6))
    actions = torch.stack([torch.randint(0, 5, (3, 3)), torch.randint(0, 3, (3, 3))], dim=-1)

    plain = F.cross_entropy(model(frames, actions).flatten(0, 2), frames[:, 1:].flatten())
    plain_grads = torch.autograd.grad(plain, list(model.parameters()))
    for chunk_size in (None, 7):  # one chunk, and several uneven ones
        fused = model.loss(frames, actions, chunk_size=chunk_size)
        fused_grads = torch.autograd.grad(fused, list(model.parameters()))
        # fp32 throughout; both paths do the same matmuls, so they agree to rounding.
        torch.testing.assert_close(fused, plain, atol=1e-6, rtol=1e-6)
        for (name, _), a, b in zip(model.named_parameters(), fused_grads, plain_grads):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("overrides, message", [
    (dict(kind="diffusion"), "kind must be 'ar' here"),
    (dict(steps=0), "steps must be an int >= 1"),
    (dict(batch=0), "batch must be an int >= 1"),
    (dict(clip_frames=17), r"clip_frames \(17\) must be <= max_frames \(16\)"),
    (dict(eval_frames=16), r"eval_frames \(16\) must be < max_frames"),
    (dict(lr=-1.0), "lr must be a positive number"),
    (dict(dtype="int8"), "dtype must be one of"),
    (dict(heldout_fraction=1.0), r"heldout_fraction must be in \(0, 1\)"),
    (dict(heads=5), "n_heads"),
])
def test_bad_arguments_raise_before_any_work(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(tmp_path / "no-recording", tmp_path / "no-tokenizer", tmp_path / "out", **overrides)
    assert not (tmp_path / "out").exists()


def test_cli_names_the_missing_tokenizer(tiny_recording, tmp_path, capsys):
    base = ["pretrain", "world-model", "--data", str(tiny_recording), "--out", str(tmp_path / "out")]
    assert rlir.cli.main(base + ["--tokenizer", str(tmp_path / "nothing")]) == 1
    assert "tokenizer:" in capsys.readouterr().err
    assert rlir.cli.main(base) == 1
    assert "needs --tokenizer" in capsys.readouterr().err
    assert rlir.cli.main(base + ["--tokenizer", str(tmp_path), "--frame-space", "pixels"]) == 1
    assert "--frame-space is only for --kind diffusion" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_changed_codes_weigh_more_in_the_weighted_loss():
    from rlir.pretrain.world_model import weighted_code_loss

    torch.manual_seed(0)
    model = ARWorldModel(codebook_size=16, tokens_per_frame=4, action_head_sizes=[5], n_layers=1, d_model=32,
                         n_heads=2, n_kv_heads=1, max_frames=4)
    frames = torch.randint(0, 16, (2, 3, 4))
    frames[:, 1, :2] = frames[:, 0, :2]  # some codes copy the previous frame
    actions = torch.randint(0, 5, (2, 2, 1))
    assert torch.allclose(weighted_code_loss(model, frames, actions, 1.0), model.loss(frames, actions))
    logp = model.token_logprobs(frames, actions)
    weight = torch.where(frames[:, 1:] != frames[:, :-1], 4.0, 1.0)
    expected = -(logp * weight).sum() / weight.sum()
    assert torch.allclose(weighted_code_loss(model, frames, actions, 4.0), expected)


def test_a_second_stage_starts_from_the_first_stages_weights(tiny_recording, tiny_tokenizer, tmp_path):
    common = ["pretrain", "world-model", "--data", str(tiny_recording), "--tokenizer", str(tiny_tokenizer),
              "--threads", "1", "--quiet", "--eval-every", "0", *TINY_MODEL]
    assert rlir.cli.main([*common, "--steps", "2", "--out", str(tmp_path / "first")]) == 0
    first = ARWorldModel.from_pretrained(tmp_path / "first")
    assert rlir.cli.main([*common, "--steps", "1", "--lr", "1e-12", "--init", str(tmp_path / "first"),
                          "--changed-code-weight", "2", "--out", str(tmp_path / "second")]) == 0
    second = ARWorldModel.from_pretrained(tmp_path / "second")
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-2), name  # one step at lr 1e-12 moves nothing
    metrics = json.loads((tmp_path / "second" / "metrics.json").read_text())
    assert metrics["training"]["init"] == str(tmp_path / "first") and metrics["training"]["changed_code_weight"] == 2


def test_only_the_changes_of_weighed_transitions_weigh_more():
    from rlir.pretrain.world_model import weighted_code_loss

    torch.manual_seed(0)
    model = ARWorldModel(codebook_size=16, tokens_per_frame=4, action_head_sizes=[5], n_layers=1, d_model=32,
                         n_heads=2, n_kv_heads=1, max_frames=4)
    frames = torch.randint(0, 16, (2, 3, 4))
    actions = torch.randint(0, 5, (2, 2, 1))
    weighed = torch.tensor([[True, False], [False, True]])
    logp = model.token_logprobs(frames, actions)
    weight = torch.where((frames[:, 1:] != frames[:, :-1]) & weighed[:, :, None], 4.0, 1.0)
    expected = -(logp * weight).sum() / weight.sum()
    torch.testing.assert_close(weighted_code_loss(model, frames, actions, 4.0, weighed), expected)
    assert not torch.allclose(expected, weighted_code_loss(model, frames, actions, 4.0))


def test_player_moved_is_crafters_replayed_state(tiny_recording):
    from rlir.data import Recording
    from rlir.pretrain.world_model import player_moved

    recording = Recording(tiny_recording)
    moved = player_moved(recording, recording.episode_ids)
    for episode in recording.episode_ids:
        _, actions = recording.load_episode(episode)
        is_move = torch.from_numpy((actions[:, 0] >= 1) & (actions[:, 0] <= 4))  # Crafter's move_* actions
        assert moved[episode].dtype == torch.bool and len(moved[episode]) == len(actions)
        assert not (moved[episode] & ~is_move).any()  # only a move moves the player
        assert moved[episode].any()


def test_changed_codes_moved_trains_and_is_recorded(tiny_recording, tiny_tokenizer, tmp_path):
    assert rlir.cli.main(["pretrain", "world-model", "--data", str(tiny_recording), "--tokenizer",
                          str(tiny_tokenizer), "--threads", "1", "--quiet", "--eval-every", "0", *TINY_MODEL,
                          "--steps", "2", "--changed-code-weight", "4", "--changed-codes", "moved",
                          "--out", str(tmp_path / "moved")]) == 0
    metrics = json.loads((tmp_path / "moved" / "metrics.json").read_text())
    assert metrics["training"]["changed_codes"] == "moved"
