#!/usr/bin/env bash
# Phase 4, long context (32K, context parallel) of the text LLM, starting from the phase-3 run
# (the config's checkpoint.load). Settings: launch/common.sh. Examples:
#   NNODES=2 bash launch/phase4.sh                                   # Qwen3-8B on 16 GPUs
#   DRY_RUN=1 bash launch/phase4.sh --layout-only                    # validates for its 16 ranks
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch_phase 4 "$REPO_DIR/examples/qwen3_8b_phase4_long.yaml" "$@"
