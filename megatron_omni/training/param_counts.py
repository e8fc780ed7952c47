"""Parameter counts of the whole model (all pipeline stages and tensor-parallel shards), for the
start of the training log, and the projector sizes the MFU counts with (training/flops.py)."""
from __future__ import annotations

import torch
from megatron.core import parallel_state as ps
from megatron.core.utils import unwrap_model

from megatron_omni import platform


def _full_numel(param: torch.Tensor) -> int:
    """Elements of the whole parameter: a tensor-parallel shard times the TP size."""
    sharded = getattr(param, "tensor_model_parallel", False)
    return param.numel() * (ps.get_tensor_model_parallel_world_size() if sharded else 1)


def model_parameters(chunks) -> tuple[int, int]:
    """(trainable, total) parameters of the model over all ranks (collective: every rank calls
    it). Each parameter counts once: TP-sharded ones on every TP rank (a shard each), the
    replicated ones on TP rank 0, only data- and context-parallel rank 0 count, and the last
    pipeline stage's copy of tied embeddings (megatron marks it ``shared``) does not."""
    counts = torch.zeros(2, dtype=torch.float64, device=platform.device())
    if ps.get_data_parallel_rank() == 0 and ps.get_context_parallel_rank() == 0:
        tp_rank0 = ps.get_tensor_model_parallel_rank() == 0
        for chunk in chunks:
            for p in chunk.parameters():
                if getattr(p, "shared", False):
                    continue
                if tp_rank0 or getattr(p, "tensor_model_parallel", False):
                    counts[1] += p.numel()
                    counts[0] += p.numel() if p.requires_grad else 0
    torch.distributed.all_reduce(counts)
    trainable, total = (int(n) for n in counts.tolist())
    return trainable, total


def projector_parameters(chunks) -> dict[str, int]:
    """{"vision": n, "audio": n}: the full parameters of the omni model's projectors on this
    rank's first chunk (pipeline stage 0 holds them; empty elsewhere and for the text LLM)."""
    module = unwrap_model(chunks)[0]
    out = {}
    for kind in ("vision", "audio"):
        projector = getattr(module, f"{kind}_projector", None)
        if projector is not None:
            out[kind] = sum(_full_numel(p) for p in projector.parameters())
    return out
