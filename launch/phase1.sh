#!/usr/bin/env bash
# Phase 1, adapter alignment: the omni model's projectors train, the LLM and both encoders are
# frozen (model.omni, training.trainable). Settings: launch/common.sh. Examples:
#   bash launch/phase1.sh                                            # Qwen3-8B omni on 8 GPUs
#   DRY_RUN=1 bash launch/phase1.sh --layout-only                    # validate on a machine without GPUs
#   CONFIG=examples/omni_tiny_cpu.yaml GPUS_PER_NODE=2 bash launch/phase1.sh   # 2 CPU ranks
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch_phase 1 "$REPO_DIR/examples/omni_8b_phase1_8gpu.yaml" "$@"
