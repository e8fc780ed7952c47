#!/usr/bin/env bash
# Phase 5, SFT of the omni model on conversations, loss on the assistant turns only, starting from
# the phase-3 run (the config's checkpoint.load); docs/sft.md. Stage 1 (8K) is the default config,
# stage 2 (long CoT, 32K) its own. Settings: launch/common.sh. Examples:
#   bash launch/phase5.sh                                            # Qwen3-8B omni on 8 GPUs, stage 1
#   CONFIG=examples/omni_8b_sft_stage2_8gpu.yaml bash launch/phase5.sh   # stage 2, from stage 1
#   DRY_RUN=1 bash launch/phase5.sh --layout-only                    # validate on a machine without GPUs
#   CONFIG=examples/omni_tiny_sft_cpu.yaml GPUS_PER_NODE=2 bash launch/phase5.sh   # 2 CPU ranks
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch_phase 5 "$REPO_DIR/examples/omni_8b_sft_stage1_8gpu.yaml" "$@"
