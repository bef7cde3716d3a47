"""Helpers for the distributed tests: torchrun jobs of 2 CPU processes (gloo) on the tiny configs, and the
one-process runs they are compared with."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "tests" / "distributed" / "worker.py"
TINY = {"ar": REPO / "configs" / "tiny_ar.yaml", "diffusion": REPO / "configs" / "tiny_diffusion.yaml"}
# Quiet runs with a learning signal (the tiny random IDM gives equal exact-match rewards within a group).
QUIET = ["reward.mode=loglik", "log.tensorboard=false", "log.stdout=false"]
MACHINE = ("time", "time/", "perf/", "mem/")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def torchrun(args, *, nproc=2, timeout=240, extra=()):
    """Run ``torchrun --standalone --nproc_per_node nproc [extra] args`` from the repository root; returns the
    CompletedProcess (stdout and stderr together in .stdout)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "--monitor-interval=0.2", *extra, *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def run_jobs(tmp_path, runs, **kwargs):
    """Several runs in one torchrun job (tests/distributed/worker.py); fails the test with the job's output."""
    spec = tmp_path / f"spec-{len(list(tmp_path.glob('spec-*')))}.json"
    spec.write_text(json.dumps([{**r, "config": str(r["config"]), "out": str(r["out"])} for r in runs]))
    done = torchrun([WORKER, "runs", spec], **kwargs)
    assert done.returncode == 0, done.stdout[-6000:]
    return done


def one_process(config, out, overrides=(), steps=None, resume=False):
    """The same run in this process (no process group)."""
    from rlir.grpo import GRPOTrainer
    from rlir.grpo.config import load_config

    cfg = load_config(config, [*overrides, f"out={out}"])
    trainer = GRPOTrainer.from_config(cfg, resume=resume)
    try:
        trainer.train(steps)
    finally:
        trainer.close()
    return trainer


def metrics(run_dir):
    """The optimisation metrics of each logged step (machine timings left out)."""
    lines = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(MACHINE)} for r in lines]


def final_weights(run_dir):
    from safetensors.torch import load_file

    from rlir.grpo.checkpoint import latest_checkpoint

    return load_file(str(latest_checkpoint(Path(run_dir) / "checkpoints") / "policy.safetensors"))


def assert_close_metrics(a, b, tol=1e-5, steps=None):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        if steps is not None and ra["step"] not in steps:
            continue
        assert set(ra) == set(rb), set(ra) ^ set(rb)
        for key, va in ra.items():
            vb = rb[key]
            assert abs(va - vb) <= tol * max(1.0, abs(va)), (ra["step"], key, va, vb)


def assert_close_weights(a, b, tol=1e-5):
    assert set(a) == set(b)
    for key in a:
        diff = (a[key].float() - b[key].float()).abs().max().item()
        assert diff <= tol, (key, diff)


def tiny_dict(kind):
    return yaml.safe_load(TINY[kind].read_text())


LOGGED_RUN = [*QUIET, "train.steps=2", "train.checkpoint_interval=0", "log.stdout=true", "log.tensorboard=true"]


@pytest.fixture(scope="session")
def two_rank_run(tmp_path_factory):
    """`torchrun --nproc_per_node 2 -m rlir train` on the tiny AR config (FSDP, the default): (run dir, output)."""
    out = tmp_path_factory.mktemp("two_rank_run") / "run"
    done = torchrun(["-m", "rlir", "train", "--config", TINY["ar"], "--out", out, *LOGGED_RUN])
    assert done.returncode == 0, done.stdout[-6000:]
    return out, done.stdout
