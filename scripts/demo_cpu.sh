#!/usr/bin/env bash
# The embedded default, end to end on this CPU: install, make a learnable corpus, train a
# tokenizer, preprocess to indexed binaries, train the tiny Qwen3-style model on 2 ranks with
# TP=2, save, convert to Hugging Face and generate with transformers. Output under runs/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_cpu.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python launch/demo.py "$@"
