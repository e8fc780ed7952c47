#!/usr/bin/env bash
# Phase 3, joint pretraining (text LLM today). Settings: launch/common.sh. Examples:
#   NNODES=4 bash launch/phase3.sh                                   # Qwen3-8B on 32 GPUs
#   CONFIG=examples/qwen3_32b_phase3_64gpu.yaml NNODES=8 bash launch/phase3.sh
#   DRY_RUN=1 GPUS_PER_NODE=8 NNODES=4 bash launch/phase3.sh --set training.lr=2e-5
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch_phase 3 "$REPO_DIR/examples/qwen3_8b_phase3_32gpu.yaml" "$@"
