#!/usr/bin/env bash
# Mutation testing of one module in a throwaway copy (see scripts/mutation.py --help), e.g.
#   scripts/mutation.sh kernels/group_advantage.py --tests tests/kernels/test_group_advantage.py --budget 900
# Needs mutmut (pip install -e '.[dev]'). Runs niced, on one thread and one mutmut worker.
set -euo pipefail
cd "$(dirname "$0")/.."
exec env OMP_NUM_THREADS=1 nice -n 15 python scripts/mutation.py "$@"
