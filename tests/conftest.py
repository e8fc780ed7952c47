"""Suite-wide set-up: on a machine without CUDA, Triton kernels run in the interpreter.

TRITON_INTERPRET must be set before triton is first imported (megatron-core and our kernels
import it), so it is set here, at collection time, ahead of every test module.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
