#!/usr/bin/env bash
# Phase 5, SFT. This build has no SFT data path or loss yet: the run (and DRY_RUN=1) stops
# with a config error saying so (config/phases.py). Until then the default config is the
# phase-3 model it would continue from. Settings: launch/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch_phase 5 "$REPO_DIR/examples/omni_8b_phase3_32gpu.yaml" "$@"
