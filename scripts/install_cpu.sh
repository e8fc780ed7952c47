#!/usr/bin/env bash
# Installs what the CPU path needs (idempotent; seconds when already installed): torch first and
# pinned (an unpinned torch pulls a multi-GB CUDA build), then the pinned requirements, then this
# package in editable mode without touching its dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check --root-user-action=ignore torch==2.13.0
python -m pip install -q --disable-pip-version-check --root-user-action=ignore -r requirements-cpu.txt
python -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps -e .
