#!/usr/bin/env python
"""Mutation testing of one module with mutmut, in a throwaway copy of the repository, within a time budget.

    scripts/mutation.py kernels/grpo_loss.py --tests tests/kernels/test_grpo_loss.py --budget 1800

The repository is copied to /tmp/mut-<module> (the working tree, or a commit with ``--rev``; never
.venv, runs/, data/, build/, .git) and mutmut runs there, so nothing under the repository is ever mutated (other
jobs import from it). The copy is flattened into one ``rlir`` package (kernels/ -> rlir/kernels, profiling/ ->
rlir/profiling, plus configs/ and checkpoints/), which is how setup.py installs it: the tests import the mutated
copy through ``mutants/`` on sys.path instead of the editable install's files. mutmut runs with one worker,
under ``nice -n 15`` and OMP_NUM_THREADS=1; only the tests given with ``--tests`` run (mutmut then runs, per
mutant, only those of them that call the mutated function).

At the end (or when the budget runs out) the script reads mutmut's results and writes the score and every
surviving mutant's diff to ``--out`` (default <copy>/survivors.txt). Detected = killed + timeout + segfault;
"no tests" (no selected test calls the function) counts as surviving. Mutants left unchecked when the budget
ran out are reported separately and are not in the score.

mutmut 3 does not mutate decorated functions other than static/class methods, so ``@triton.jit`` kernel bodies
are never mutated: the score of a kernels/ module is the score of its host code and PyTorch reference.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Not copied: at the repository root, and anywhere.
EXCLUDE_ROOT = {".venv", "runs", "data", "build", "dist", ".git", ".whl", "mutants"}
EXCLUDE_ANYWHERE = ("*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache")
# Repository folders that setup.py installs inside the rlir package.
INSTALLED_AS = {"kernels": "rlir/kernels", "profiling": "rlir/profiling", "configs": "rlir/configs",
                "checkpoints": "rlir/checkpoints"}
DETECTED = ("killed", "timeout", "segfault", "caught by type check")
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 35: "suspicious",
          36: "timeout", 37: "caught by type check", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout",
          -11: "segfault", -9: "segfault", None: "not checked"}


def flattened(module: str) -> str:
    first, _, rest = module.partition("/")
    return f"{INSTALLED_AS[first]}/{rest}" if first in INSTALLED_AS and first in ("kernels", "profiling") else module


def make_copy(work: Path, rev: str | None, overlay: list[str]) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    if rev:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
        for path in overlay:  # working-tree files laid over the commit (e.g. new tests not yet committed)
            src = REPO / path
            dst = work / path
            dst.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree(src, dst, dirs_exist_ok=True) if src.is_dir() else shutil.copy2(src, dst))
    else:
        anywhere = shutil.ignore_patterns(*EXCLUDE_ANYWHERE)

        def ignore(folder, names):
            skip = set(anywhere(folder, names))
            return skip | (EXCLUDE_ROOT & set(names)) if Path(folder) == REPO else skip

        shutil.copytree(REPO, work, ignore=ignore, symlinks=True, dirs_exist_ok=True)
    for folder, inside in INSTALLED_AS.items():
        if (work / folder).is_dir():
            # tests read configs/ and checkpoints/ at the root too; kernels/ and profiling/ only exist in rlir/
            if folder in ("kernels", "profiling"):
                shutil.move(work / folder, work / inside)
            else:
                shutil.copytree(work / folder, work / inside)


def write_config(work: Path, modules: list[str], tests: list[str], extra_pytest: list[str]) -> None:
    text = (work / "pyproject.toml").read_text()
    text = re.sub(r"(?ms)^\[tool\.mutmut\].*?(?=^\[|\Z)", "", text)

    def toml_list(items):
        return "[" + ", ".join(json.dumps(i) for i in items) + "]"

    text += ("\n[tool.mutmut]\n"
             'source_paths = ["rlir"]\n'
             f"only_mutate = {toml_list(modules)}\n"
             f"pytest_add_cli_args_test_selection = {toml_list(tests)}\n"
             f"pytest_add_cli_args = {toml_list(['-p', 'no:cacheprovider', '-q', *extra_pytest])}\n"
             'also_copy = ["configs", "checkpoints", "benchmarks", "scripts"]\n'
             "use_git_change_detection = false\n"
             "use_setproctitle = false\n")
    (work / "pyproject.toml").write_text(text)


def read_results(work: Path, modules: list[str]) -> dict[str, str]:
    status = {}
    for module in modules:
        meta = work / "mutants" / (module + ".meta")
        if not meta.exists():
            continue
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            status[name] = STATUS.get(code, "suspicious")
    return status


DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
names, paths = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(json.dumps({n: get_diff_for_mutant(n, path=paths[n]) for n in names}))
"""


def diffs_of(work: Path, names: list[str], modules: list[str], env: dict) -> dict:
    """The diff of each mutant, from one Python process (``mutmut show`` per mutant costs a start-up each)."""
    if not names:
        return {}
    paths = {}
    for module in modules:
        meta = work / "mutants" / (module + ".meta")
        if meta.exists():
            paths.update({k: module for k in json.loads(meta.read_text())["exit_code_by_key"]})
    out = subprocess.run([sys.executable, "-c", DIFFS, json.dumps(names), json.dumps(paths)], cwd=work, env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        return {n: out.stderr.strip()[-500:] for n in names}
    return json.loads(out.stdout)


RERUN = """
import json, os, sys
import pytest
names, tests, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
with open(os.devnull, "w") as quiet:  # import torch, rlir and the tests once, before forking
    stdout, sys.stdout = sys.stdout, quiet
    pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "--rootdir=.", *tests])
    sys.stdout = stdout
pid = os.fork()
if pid == 0:  # the tests must pass with no mutant active, or every mutant would count as killed
    os.environ["MUTANT_UNDER_TEST"] = ""
    os._exit(int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", "--rootdir=.", *tests])))
if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0:
    sys.exit("the tests fail with no mutant active: fix them first")
done = json.load(open(out)) if os.path.exists(out) else {}
for name in names:
    if name in done:
        continue
    pid = os.fork()
    if pid == 0:  # the trampolines read the mutant to activate from MUTANT_UNDER_TEST
        os.environ["MUTANT_UNDER_TEST"] = name
        sys.stdout = sys.stderr = open(os.devnull, "w")
        os._exit(int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", "--rootdir=.", *tests])))
    _, status = os.waitpid(pid, 0)
    done[name] = os.waitstatus_to_exitcode(status)
    json.dump(done, open(out, "w"))
"""


def rerun_survivors(work: Path, modules: list[str], args) -> int:
    """Run the surviving mutants of an earlier run against ``args.tests`` (the tests added for them), one fork
    per mutant with the mutant active, as mutmut does, but without mutmut's stats and clean runs. A mutant that
    makes a test fail is killed; the verdicts go into mutmut's .meta files."""
    if not (work / "mutants").is_dir():
        sys.exit(f"--rerun-survivors: no earlier run in {work}")
    survivors = [k for module in modules for k, v in json.loads(
        (work / "mutants" / (module + ".meta")).read_text())["exit_code_by_key"].items()
        if STATUS.get(v) not in DETECTED and (STATUS.get(v) != "not checked" or args.include_unchecked)]
    if not survivors:
        sys.exit("no surviving mutant to rerun")
    for test in args.tests:  # the new or changed tests, and their folder's conftest.py
        path = Path(test.split("::")[0])
        for src in ({path, path.parent / "conftest.py"} if path.suffix == ".py" else {path}):
            if (REPO / src).is_dir():
                shutil.copytree(REPO / src, work / "mutants" / src, dirs_exist_ok=True)
            elif (REPO / src).exists():
                (work / "mutants" / src).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / src, work / "mutants" / src)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(work / "mutants") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = work / "rerun.json"  # with --continue, the survivors already rerun are not run again
    if not args.resume:
        out.unlink(missing_ok=True)
    start = time.time()
    rc = subprocess.run(["timeout", str(int(args.budget)), "nice", "-n", "15", sys.executable, "-c", RERUN,
                         json.dumps(survivors), json.dumps(args.tests), str(out)], cwd=work / "mutants", env=env,
                        ).returncode
    elapsed = time.time() - start
    verdicts = json.loads(out.read_text()) if out.exists() else {}
    for module in modules:
        meta = work / "mutants" / (module + ".meta")
        data = json.loads(meta.read_text())
        for name, code in verdicts.items():
            if name not in data["exit_code_by_key"]:
                continue
            if code == 1:  # a test failed
                data["exit_code_by_key"][name] = 1
            elif data["exit_code_by_key"][name] is None:  # unchecked until now: 0 survived, 5 no test ran it
                data["exit_code_by_key"][name] = code
        meta.write_text(json.dumps(data))
    print(f"reran {len(verdicts)} of {len(survivors)} survivors: {sum(c == 1 for c in verdicts.values())} killed")
    return report(work, modules, args, rc, elapsed, env)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("modules", nargs="+", help="repository paths of the files to mutate, e.g. kernels/grpo_loss.py")
    p.add_argument("--tests", nargs="+", required=True, help="test files or node ids to run (a fast subset)")
    p.add_argument("--budget", type=float, default=1800, help="seconds for mutmut run (default 1800)")
    p.add_argument("--rev", help="mutate this commit (git archive) instead of the working tree")
    p.add_argument("--overlay", nargs="*", default=[], help="with --rev: working-tree paths laid over the commit")
    p.add_argument("--work", help="the throwaway copy (default /tmp/mut-<first module>)")
    p.add_argument("--children", type=int, default=1, help="mutants tested at once (default 1: one core)")
    p.add_argument("--out", help="where the score and survivors go (default <copy>/survivors.txt)")
    p.add_argument("--pytest-arg", action="append", default=[], help="extra pytest argument (repeatable)")
    p.add_argument("--rerun-survivors", action="store_true",
                   help="in the existing copy: bring --tests (the tests added for the survivors) over from the "
                        "working tree and run every surviving mutant against them; the other verdicts are kept")
    p.add_argument("--include-unchecked", action="store_true",
                   help="with --rerun-survivors: also run the mutants an earlier run left unchecked (its budget ran "
                        "out) against --tests, so a run is finished with a fast test subset")
    p.add_argument("--continue", dest="resume", action="store_true",
                   help="continue an earlier run in the existing copy (mutmut keeps its verdicts and checks the rest)")
    args = p.parse_args()

    slug = re.sub(r"[^A-Za-z0-9]+", "-", Path(args.modules[0]).with_suffix("").as_posix()).strip("-")
    work = Path(args.work or f"/tmp/mut-{slug}").resolve()
    if work == REPO or REPO in work.parents:
        sys.exit("the copy must lie outside the repository")
    modules = [flattened(m) for m in args.modules]
    if args.rerun_survivors:
        return rerun_survivors(work, modules, args)
    if not args.resume:
        make_copy(work, args.rev, args.overlay)
        write_config(work, modules, args.tests, args.pytest_arg)
    # mutants/ must exist before Python starts: a sys.path entry that does not exist yet is cached as having no
    # modules, and the tests would then import the unmutated editable install instead.
    (work / "mutants").mkdir(exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(work / "mutants") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    mutmut = shutil.which("mutmut")
    if mutmut is None:
        sys.exit("mutmut is not installed: pip install -e '.[dev]'")
    cmd = ["timeout", "--signal=INT", "--kill-after=60", str(int(args.budget)), "nice", "-n", "15", mutmut,
           "run", "--max-children", str(args.children)]
    start = time.time()
    with open(work / "mutmut.log", "a") as log:
        rc = subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    elapsed = time.time() - start
    return report(work, modules, args, rc, elapsed, env)


def report(work: Path, modules: list[str], args, rc: int, elapsed: float, env: dict) -> int:
    status = read_results(work, modules)
    counts: dict[str, int] = {}
    for s in status.values():
        counts[s] = counts.get(s, 0) + 1
    checked = {n: s for n, s in status.items() if s not in ("not checked", "check was interrupted by user")}
    detected = sum(1 for s in checked.values() if s in DETECTED)
    survivors = sorted(n for n, s in checked.items() if s not in DETECTED)
    score = f"{detected}/{len(checked)}" + (f" = {100 * detected / len(checked):.1f}%" if checked else "")
    lines = [f"modules: {' '.join(args.modules)}",
             f"source: {'commit ' + args.rev if args.rev else 'working tree'} of {REPO}",
             f"tests: {' '.join(args.tests)}",
             f"{'survivors rerun against the tests above' if args.rerun_survivors else 'mutmut'}: exit code {rc} "
             f"after {elapsed:.0f} s (budget {args.budget:.0f} s)",
             f"mutants: {len(status)}; " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
             f"score (detected / checked): {score}", ""]
    diffs = diffs_of(work, survivors, modules, env)
    for name in survivors:
        lines += [f"## {name}: {checked[name]}", diffs.get(name, ""), ""]
    text = "\n".join(lines) + "\n"
    out = Path(args.out) if args.out else work / "survivors.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print("\n".join(lines[:6]))
    print(f"{len(survivors)} survivors written to {out}")
    return 0 if rc in (0, 124, 130, -2) else rc


if __name__ == "__main__":
    sys.exit(main())
