"""What the distributed tests start under torchrun: several GRPO runs in one job (one process group, so the
job's start-up is paid once), or one ``rlir train`` command line with a rank killed mid-step.

    torchrun --standalone --nproc_per_node 2 tests/distributed/worker.py runs SPEC.json
    torchrun --standalone --nproc_per_node 2 --max-restarts 1 tests/distributed/worker.py \
        cli --kill-rank 1 --kill-step 3 -- train --config ... --out ...

SPEC.json: [{"config": path, "out": dir, "overrides": ["key=value", ...], "resume": false, "steps": null}, ...]
("steps": stop after that many steps, as a job that was interrupted).
--kill-rank R --kill-step K: rank R SIGKILLs itself in the middle of step K (after its rollout, before its
updates) on the job's first attempt only (TORCHELASTIC_RESTART_COUNT 0), as a crashed or OOM-killed rank.
"""
import faulthandler
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def install_kill(rank: int, step: int) -> None:
    from rlir.grpo.trainer import GRPOTrainer

    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) != 0 or int(os.environ["RANK"]) != rank:
        return
    real = GRPOTrainer._trusted_step

    def trusted_step_then_die(self, rollout, timer):
        if self.step_count + 1 == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, rollout, timer)

    GRPOTrainer._trusted_step = trusted_step_then_die


def runs(spec_path: str) -> int:
    from rlir.grpo.config import load_config
    from rlir.parallel import close_distributed, init_distributed
    from rlir.grpo.trainer import GRPOTrainer

    init_distributed("cpu")
    try:
        for run in json.loads(Path(spec_path).read_text()):
            cfg = load_config(run["config"], [*run.get("overrides", []), f"out={run['out']}"])
            trainer = GRPOTrainer.from_config(cfg, resume=run.get("resume", False))
            try:
                trainer.train(run.get("steps"))
            finally:
                trainer.close()
    finally:
        close_distributed()
    return 0


def cli(argv: list) -> int:
    args = list(argv)
    if "--kill-rank" in args:
        i = args.index("--kill-rank")
        rank, step = int(args[i + 1]), int(args[i + 3])
        del args[i:i + 4]
        install_kill(rank, step)
    if args and args[0] == "--":
        args = args[1:]
    from rlir.cli import main

    return main(args)


if __name__ == "__main__":
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID` prints where a stuck rank is
    if sys.argv[1] == "runs":
        sys.exit(runs(sys.argv[2]))
    sys.exit(cli(sys.argv[2:]))
