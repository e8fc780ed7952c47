#!/usr/bin/env bash
# Phase 3, omni joint pretraining (all parameters, the progressive modality mix), starting from
# the phase-2 run. Settings: launch/common.sh. Examples:
#   NNODES=4 bash launch/phase3.sh                                   # Qwen3-8B omni on 32 GPUs
#   CONFIG=examples/omni_32b_phase3_64gpu.yaml NNODES=8 bash launch/phase3.sh
#   CONFIG=examples/qwen3_8b_phase3_32gpu.yaml NNODES=4 bash launch/phase3.sh   # the text LLM only
#   DRY_RUN=1 GPUS_PER_NODE=8 NNODES=4 bash launch/phase3.sh --layout-only --set training.lr=2e-5
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch_phase 3 "$REPO_DIR/examples/omni_8b_phase3_32gpu.yaml" "$@"
