"""Suite-wide set-up: on a machine without CUDA, Triton kernels run in the interpreter (set here,
at collection time, before any test module imports triton); the ``megatron_single_rank`` fixture
for tests that need megatron's parallel state."""
import pytest

from megatron_omni.platform import use_triton_interpreter_without_cuda

use_triton_interpreter_without_cuda()


@pytest.fixture(scope="module")
def megatron_single_rank():
    """torch.distributed + megatron's parallel state for one process at TP=PP=1 (RNG tracker seeded
    with 0), once per module that asks for it; multi-rank tests spawn their own ranks
    (tests/models/multirank.py). Left alone when parallel state is already initialised."""
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    from megatron_omni import platform

    platform.init_distributed()
    created = not ps.model_parallel_is_initialized()
    if created:
        ps.initialize_model_parallel(1, 1)
        tensor_parallel.model_parallel_cuda_manual_seed(0)
    yield
    if created:
        ps.destroy_model_parallel()
