"""Suite-wide set-up: on a machine without CUDA, Triton kernels run in the interpreter (set here,
at collection time, before any test module imports triton)."""
from megatron_omni.platform import use_triton_interpreter_without_cuda

use_triton_interpreter_without_cuda()
