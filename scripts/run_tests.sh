#!/usr/bin/env bash
# The test command (README, .ci/run): install the CPU environment, then run the whole suite.
# Triton kernels run in the interpreter (tests/conftest.py sets TRITON_INTERPRET=1 without CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_cpu.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
python -m pytest -q -p no:cacheprovider tests "$@"
