"""The shipped Crafter checkpoints reproduce their committed reports on a small recording of unseen seeds.

The README's base-model table comes from docs/base_models/{ar,dit}_seed1000/report.json: 64 prompts x 15 frames
from a recording of 20 new episodes (seeds 1000-1019, 500 steps each), scored by `rlir eval --all-episodes`. Here
the same path (``rlir.data.record`` then ``rlir.commands.eval.run_eval``, what `rlir data record` and `rlir eval` run)
on the first 5 of those episodes and 24 prompts, so that it fits in about 4 minutes on 2 CPU cores, is held
against those reports ("after", the shipped model, and "real"). Plus the tokenizer's reconstruction PSNR ("The
tokenizer went from 31.3 to 42.1 dB") on the same real frames.

Tolerances, and why: this set is a quarter of the reports', so its numbers differ by sampling. A share over
24 x 15 = 360 frames has a binomial standard error of about 0.02, but the 15 frames of a clip are correlated and 5
episodes cover fewer situations, so we allow 0.08. PSNR and SSIM are means over 24 clips whose per-clip values
spread by several dB: we allow 1.5 dB and 0.08; the tokenizer's PSNR (a mean over 384 frames), 2 dB. These
bounds catch a broken or swapped checkpoint, a wrong frame size or tokenizer, or an IDM scored against shifted
actions (tests/eval/test_metrics_handbuilt.py); they do not resolve RLIR deltas of a few points, which
tests/checkpoints/test_shipped_quickstart.py checks on the full set.

Passed with the checkpoints of commit 2b52333 in 3.0 minutes on the 2-core machine, shared with two training runs.
Marked ``slow`` and ``shipped``: not in the default `python -m pytest` run (tests/conftest.py deselects
``shipped`` unless -m names it); run it with `python -m pytest -m shipped`.
"""
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2] / "checkpoints" / "crafter"
REPORTS = Path(__file__).resolve().parents[2] / "docs" / "base_models"
# Not the reward IDM's accuracy: the committed base-model reports were scored with the previous reward IDM.
KEYS = ("verifier/scroll_fidelity", "eval_idm/frame_accuracy", "psnr_db", "ssim")


def _committed(model: str) -> dict:
    """The committed report of ``model`` on seeds 1000-1019 (the README's base-model table): its real-frame and
    shipped-model ("after") figures."""
    metrics = json.loads((REPORTS / f"{model.split('_')[0]}_seed1000" / "report.json").read_text())["metrics"]
    return {"real": {k: metrics[k]["real"] for k in KEYS if metrics[k].get("real") is not None},
            "model": {k: metrics[k]["after"] for k in KEYS}}


README = {"tokenizer_psnr_db": 42.1}
TOLERANCE = {"verifier/scroll_fidelity": 0.08, "eval_idm/frame_accuracy": 0.08, "reward_idm/frame_accuracy": 0.08, "psnr_db": 1.5, "ssim": 0.08}
TOKENIZER_TOLERANCE_DB = 2.0
EPISODES, STEPS, SEED, PROMPTS, FRAMES = 5, 500, 1000, 24, 15


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    from rlir.data import record

    out = tmp_path_factory.mktemp("shipped") / "seed1000"
    record("crafter", out, episodes=EPISODES, steps=STEPS, seed=SEED, progress=False)
    return out


def _check(measured: dict, expected: dict, what: str):
    for key, want in expected.items():
        assert abs(measured[key] - want) <= TOLERANCE[key], f"{what} {key}: {measured[key]:.4f}, README {want}"


@pytest.mark.slow
@pytest.mark.shipped
@pytest.mark.parametrize("model", ["ar_world_model", "dit_world_model"])
def test_world_model_and_idms_match_the_readme(recording, model, one_thread):
    from rlir.commands.eval import run_eval

    report = run_eval(recording, world_model=ROOT / model, tokenizer=ROOT / "tokenizer", idm=ROOT / "idm",
                      eval_idm=ROOT / "eval_idm", prompts=PROMPTS, frames=FRAMES, all_episodes=True, seed=0)
    assert report["prompts"] == PROMPTS and report["frames"] == FRAMES
    metrics, committed = report["metrics"], _committed(model)
    _check({k: metrics[k]["real"] for k in committed["real"]}, committed["real"], "real frames:")
    _check({k: metrics[k]["model"] for k in committed["model"]}, committed["model"], f"{model}:")

@pytest.mark.slow
@pytest.mark.shipped
def test_tokenizer_reconstruction_psnr_matches_the_readme(recording, one_thread):
    from rlir.data import Recording
    from rlir.eval.evaluate import HeldOutPrompts
    from rlir.metrics.image import psnr
    from rlir.models.tokenizer import VQTokenizer

    tokenizer = VQTokenizer.from_pretrained(ROOT / "tokenizer").float().eval()
    frames = HeldOutPrompts.from_recording(Recording(recording, frame_size=tokenizer.frame_size), PROMPTS, FRAMES,
                                           all_episodes=True).real.flatten(0, 1)
    with torch.no_grad():
        rebuilt = torch.cat([VQTokenizer.to_uint8(tokenizer.decode(tokenizer.encode(chunk)))
                             for chunk in frames.split(64)])
    measured = psnr(frames, rebuilt).mean().item()
    assert abs(measured - README["tokenizer_psnr_db"]) <= TOKENIZER_TOLERANCE_DB, measured
