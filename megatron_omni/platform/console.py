"""Known library warnings that carry no signal for this project, filtered in one place.

Each entry is (category, the exact start of the message, why it is safe to ignore). Only these
are filtered: any other warning, from a library or from us, still shows. Entry points call
``platform.prepare_process()``, which installs the filters before megatron-core is imported
(several of these are raised at import time). Besides warnings, Hugging Face's progress bars
are off by default (HF_HUB_DISABLE_PROGRESS_BARS, inherited by child processes; set it to 0 to
see them): our loads are of local folders and take milliseconds, so the bars only add lines.
"""
from __future__ import annotations

import logging
import os
import re
import warnings

from megatron_omni.platform import has_cuda

KNOWN_WARNINGS: list[tuple[type[Warning], str, str]] = [
    (UserWarning, "Transformer Engine and Apex are not installed. Falling back to",
     "megatron-core's import-time notice that it uses its torch implementations of the fused "
     "optimizer / multi-tensor ops; those are the ones the CPU path and the tests run"),
    (UserWarning, "Apex is not installed. Falling back to Torch Norm",
     "megatron-core's import-time notice; our layer specs choose their norms themselves"),
    (UserWarning, "full scope is deprecated. Use empty cuda_graph_scope",
     "raised by megatron-core's own TransformerConfig default (cuda_graph_scope='full'); we never "
     "capture CUDA graphs"),
    (DeprecationWarning, "Warning: tp_group is None, using default tp group",
     "megatron-core's internal layers call it without a group; the default tensor-parallel "
     "group is the one we set up"),
    (FutureWarning, "`torch.distributed.reduce_scatter_tensor` is deprecated",
     "raised by torch for megatron-core's sequence-parallel collectives, not our calls"),
    (FutureWarning, "`torch.distributed.all_gather_into_tensor` is deprecated",
     "raised by torch for megatron-core's sequence-parallel collectives, not our calls"),
    (FutureWarning, "`load_state_dict` is deprecated and will be removed in future versions",
     "raised by torch.distributed.checkpoint for megatron-core's dist_checkpointing load, not our "
     "call"),
    (FutureWarning, "Please use DTensor instead and we are deprecating ShardedTensor",
     "raised by torch for the ShardedTensors megatron-core's dist_checkpointing builds on load"),
    (UserWarning, "The .grad attribute of a Tensor that is not a leaf Tensor is being accessed",
     "megatron's distributed optimizer reads .grad of its parameter-shard views only to reset it "
     "(its gradients live in main_grad buffers); on CPU it is reported at cpu_compat.py because "
     "the CPU layer's torch-function mode forwards the access"),
]
"""Filtered on every machine."""

KNOWN_CPU_WARNINGS: list[tuple[type[Warning], str, str]] = [
    (UserWarning, "When using sequence parallelism it is recommended to set the environment "
     "variable CUDA_DEVICE_MAX_CONNECTIONS",
     "a CUDA stream-scheduling hint, meaningless without a GPU (launch/common.sh sets it on GPU "
     "machines)"),
    (UserWarning, "When using async grad allreduce it is recommended to set the environment "
     "variable CUDA_DEVICE_MAX_CONNECTIONS",
     "the same hint for the omni encoders' tensor-parallel layers (async grad all-reduce)"),
]
"""Filtered only without CUDA: on a GPU they are real advice."""


QUIET_LOGGERS = [
    ("megatron.core.rerun_state_machine",
     "logs 'Implicit initialization of Rerun State Machine!' and its mode at INFO on every run; we "
     "never enable rerun mode, so both lines say nothing (its warnings and errors still show)"),
]
"""Library loggers raised to WARNING: (logger name, why its INFO lines carry no signal)."""


def quiet_known_warnings() -> None:
    """Ignore the KNOWN_WARNINGS (and, without CUDA, the KNOWN_CPU_WARNINGS) in this process,
    raise the QUIET_LOGGERS to WARNING; Hugging Face progress bars off unless
    HF_HUB_DISABLE_PROGRESS_BARS is set."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name, _why in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for category, message, _why in KNOWN_WARNINGS + ([] if has_cuda() else KNOWN_CPU_WARNINGS):
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)
