#!/usr/bin/env bash
# Phase 6, preference training (DPO, trajectory-level DPO) of the omni model against a frozen
# reference (dpo.reference) or precomputed reference log-probs (launch/precompute_ref_logprobs.py),
# starting from the SFT run (the config's checkpoint.load); docs/dpo.md. With rl.grpo: true in the
# config, GRPO on the policy's own rollouts instead (docs/grpo.md). Settings: launch/common.sh.
#   bash launch/phase6.sh                                            # Qwen3-8B omni on 8 GPUs
#   CONFIG=examples/omni_8b_phase6_grpo_8gpu.yaml bash launch/phase6.sh   # GRPO, 8 GPUs
#   CONFIG=examples/omni_tiny_grpo_cpu.yaml GPUS_PER_NODE=2 bash launch/phase6.sh  # GRPO, 2 CPU ranks
#   DRY_RUN=1 bash launch/phase6.sh --layout-only                    # validate on a machine without GPUs
#   CONFIG=examples/omni_tiny_dpo_cpu.yaml GPUS_PER_NODE=2 bash launch/phase6.sh   # 2 CPU ranks
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch_phase 6 "$REPO_DIR/examples/omni_8b_phase6_dpo_8gpu.yaml" "$@"
