"""platform.prepare_process filters exactly the known library warnings: a process that builds a
model (importing megatron-core, which raises several at import time) and then raises every known
warning itself prints none of them, while a new, unrelated warning still shows."""
import os
import subprocess
import sys
from pathlib import Path

from megatron_omni.platform.console import KNOWN_CPU_WARNINGS, KNOWN_WARNINGS

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import warnings
import torch
from megatron_omni import platform
platform.prepare_process()
from megatron.core import parallel_state as ps, tensor_parallel
from megatron_omni.config import load_config
from megatron_omni.models.llm.model import build_llm
from megatron_omni.platform.console import KNOWN_CPU_WARNINGS, KNOWN_WARNINGS

platform.init_distributed()
ps.initialize_model_parallel(1, 1)
tensor_parallel.model_parallel_cuda_manual_seed(0)
cfg = load_config(None, ["model.preset=tiny", "model.num_layers=2"])
model = build_llm(cfg, vocab_size=256)
tokens = torch.zeros(1, 8, dtype=torch.long)
model(tokens, torch.arange(8)[None], None).float().sum().backward()
for category, message, _ in KNOWN_WARNINGS + KNOWN_CPU_WARNINGS:
    warnings.warn(message + " (raised by the test)", category)
warnings.warn("omni test: a fresh warning that nobody filters", UserWarning)
print("done")
"""


def test_known_warnings_are_filtered_and_others_still_show():
    env = {**os.environ, "PYTHONWARNINGS": "default", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "done" in done.stdout
    for _, message, _ in KNOWN_WARNINGS + KNOWN_CPU_WARNINGS:
        assert message not in done.stderr, message
    assert "omni test: a fresh warning that nobody filters" in done.stderr


def test_quiet_loggers_drop_info_and_keep_warnings(caplog):
    """The rerun state machine's two INFO lines per run are dropped; its warnings still show."""
    import logging

    from megatron_omni.platform.console import QUIET_LOGGERS, quiet_known_warnings

    quiet_known_warnings()
    for name, _ in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        with caplog.at_level(logging.INFO):
            logger.info("Implicit initialization of Rerun State Machine!")
            logger.warning("a real problem")
        assert [r.getMessage() for r in caplog.records if r.name == name] == ["a real problem"]
        caplog.clear()
