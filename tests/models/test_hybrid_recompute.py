"""Activation recomputation (training.recompute=full / selective) with hybrid layers: a tiny
"DSL" model (all three attention types, sparse layer dropping blocks) on a packed batch gives
exactly the loss and gradients of the same model without recomputation (one rank, fp32)."""
import pytest
import torch
from megatron.core import tensor_parallel
from megatron.core.packed_seq_params import PackedSeqParams

from megatron_omni.config import load_config
from megatron_omni.models.llm.model import build_llm
from tests.models.test_hybrid_layers import SMALL_SPARSE

CU = [0, 9, 64]
"""A 9-token sample and a 55-token one (4 blocks of 16, 3 attended)."""


def _loss_and_grads(recompute: str | None):
    torch.manual_seed(1)
    tensor_parallel.model_parallel_cuda_manual_seed(1)
    overrides = ["model.backend=local", "training.precision=fp32", "model.num_layers=3",
                 "model.layer_pattern=DSL", "model.linear.chunk_size=16", *SMALL_SPARSE]
    if recompute:
        overrides.append(f"training.recompute={recompute}")
    model = build_llm(load_config(None, overrides), 100)
    calls = []  # core attention forwards of the S and L layers: 2 each when recomputed
    for layer in model.decoder.layers[1:]:
        layer.self_attention.core_attention.register_forward_hook(lambda *_: calls.append(1))
    gen = torch.Generator().manual_seed(5)
    tokens, labels = (torch.randint(0, 100, (1, CU[-1]), generator=gen) for _ in range(2))
    cu = torch.tensor(CU, dtype=torch.int32)
    packed = PackedSeqParams(qkv_format="sbhd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                             max_seqlen_q=CU[-1], max_seqlen_kv=CU[-1])
    loss = model(tokens, torch.arange(CU[-1])[None], None, labels=labels,
                 packed_seq_params=packed).mean()
    loss.backward()
    assert len(calls) == (4 if recompute else 2)
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("recompute", ["full", "selective"])
def test_recompute_matches_no_recompute(recompute):
    ref_loss, ref_grads = _loss_and_grads(None)
    loss, grads = _loss_and_grads(recompute)
    assert loss == ref_loss
    assert grads.keys() == ref_grads.keys()
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-7, rtol=1e-6, msg=name)
