#!/usr/bin/env bash
# Phase 4, long context (32K, context parallel) of the omni model, starting from the omni phase-3
# run (the config's checkpoint.load). Settings: launch/common.sh. Examples:
#   NNODES=2 bash launch/phase4.sh                                   # Qwen3-8B omni on 16 GPUs
#   CONFIG=examples/qwen3_8b_phase4_long.yaml NNODES=2 bash launch/phase4.sh   # the text LLM only
#   CONFIG=examples/omni_tiny_phase4_cpu.yaml GPUS_PER_NODE=2 bash launch/phase4.sh   # 2 CPU ranks
#   DRY_RUN=1 bash launch/phase4.sh --layout-only                    # validates for its 16 ranks
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch_phase 4 "$REPO_DIR/examples/omni_8b_phase4_16gpu.yaml" "$@"
