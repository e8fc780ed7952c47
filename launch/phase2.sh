#!/usr/bin/env bash
# Phase 2, encoder finetune: encoders and projectors train (per-group learning rates,
# training.group_lr), the LLM is frozen; starts from the phase-1 run (the config's
# checkpoint.load). Settings: launch/common.sh. Examples:
#   bash launch/phase2.sh                                            # Qwen3-8B omni on 8 GPUs
#   DRY_RUN=1 bash launch/phase2.sh --layout-only
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch_phase 2 "$REPO_DIR/examples/omni_8b_phase2_8gpu.yaml" "$@"
