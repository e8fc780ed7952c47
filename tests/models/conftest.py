"""Megatron on one CPU process (TP=PP=1) for the model tests; multi-rank tests spawn their own
ranks (multirank.py)."""
import pytest


@pytest.fixture(scope="module", autouse=True)
def megatron_single_process():
    """torch.distributed + megatron's parallel state for one process at TP=PP=1, once per module."""
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
