"""Run a function on N gloo ranks on this machine, each with megatron's parallel state initialised
at TP = N. Failures in any rank fail the calling test.

Ranks start from a forkserver that imports the heavy libraries (PRELOAD) once per pytest
session, so each rank does not pay the seconds-long imports again. (Python 3.11's forkserver
does not get this folder on its sys.path, so test modules themselves cannot be preloaded; the
ranks import them after the fork, cheaply once their libraries are loaded.)
"""
import os
import socket

import torch
import torch.multiprocessing as mp

PRELOAD = ["megatron.core.transformer.transformer_block", "megatron.core.models.backends",
           "megatron_omni.conversion.common", "transformers.models.siglip.modeling_siglip",
           "transformers.models.whisper.modeling_whisper"]


def run_ranks(fn, world_size: int, *args) -> None:
    """Call ``fn(*args)`` on ``world_size`` ranks with TP = world_size (PP = 1); ``fn`` must be a
    module-level function (it is pickled by name)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.get_context("forkserver").set_forkserver_preload(PRELOAD)
    mp.start_processes(_rank_main, args=(world_size, port, fn, args), nprocs=world_size, join=True,
                       start_method="forkserver")


def _rank_main(rank: int, world_size: int, port: int, fn, args) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    from megatron_omni import platform

    platform.init_distributed()
    ps.initialize_model_parallel(world_size, 1)
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    try:
        fn(*args)
    finally:
        ps.destroy_model_parallel()
        torch.distributed.destroy_process_group()
