#!/usr/bin/env bash
# The omni job, end to end on this CPU: install, make the synthetic omni corpus, train the tiny
# omni model on 2 ranks at TP=2 (phase 1, then phase 3 from it), export it to one Hugging Face
# folder with to-hf and generate with transformers from image, audio and text prompts
# (launch/demo.py). Output under runs/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_cpu.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python launch/demo.py "$@"
