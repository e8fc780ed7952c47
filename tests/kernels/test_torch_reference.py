"""The chunked PyTorch ops CPU training runs (model.kernels=torch): the same signatures as the
Triton ops, forward and every gradient against the float64 references (odd sizes, packed
sequences with zero-length ones, initial and final states, GQA, the position offset of context
parallelism, the sparse path) and against the Triton ops at tiny shapes (the interpreter on
CPU), and the dispatch of model.kernels with its one log line.
"""
import inspect
import logging

import pytest
import torch

from megatron_omni.models.attention.kernel_ops import IMPLEMENTATIONS, kernel_ops
from megatron_omni.platform import backend
from omni_kernels.infllmv2 import infllmv2_attention, infllmv2_attention_torch, naive
from omni_kernels.lightning import (alibi_slopes, lightning_attn, lightning_attn_naive,
                                    lightning_attn_torch)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SPARSE = dict(block_size=16, topk=2, init_blocks=1, local_blocks=1, kernel_size=16,
              kernel_stride=8, lse_kernel_size=32, lse_kernel_stride=16)
"""16-token blocks, 4 slots per query block: sequences of 96+ tokens attend really sparsely."""


def test_signatures_match_the_triton_ops():
    assert inspect.signature(lightning_attn_torch) == inspect.signature(lightning_attn)
    assert inspect.signature(infllmv2_attention_torch) == inspect.signature(infllmv2_attention)


def leaves(*shapes, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen, dtype=dtype).to(DEVICE).requires_grad_() for s in shapes]


def outputs_and_grads(fn, inputs, seed=1) -> dict:
    """fn(*inputs) -> a tensor or (tensor, tensor | None); its values and the gradients of every
    input under a fixed random projection of all outputs."""
    out = fn(*inputs)
    out = [o for o in (out if isinstance(out, tuple) else (out,)) if o is not None]
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64)
                .to(DEVICE)).sum() for o in out)
    grads = torch.autograd.grad(loss, inputs)
    return {**{f"out{i}": o.detach() for i, o in enumerate(out)},
            **{f"d{i}": g for i, g in enumerate(grads)}}


def compare(assert_close, ref: dict, got: dict, ratio: float):
    assert ref.keys() == got.keys()
    for name in ref:
        assert_close(name, ref[name].double().cpu(), got[name].double().cpu(), ratio)


LIGHTNING = [  # B, T, H, K, V, chunk, cu_seqlens, initial state, final state, strong decay
    pytest.param(2, 77, 3, 12, 10, 16, None, True, True, False, id="T77-C16-h0-final"),
    pytest.param(1, 10, 2, 8, 8, 64, None, False, True, False, id="T10<C64-final"),
    pytest.param(1, 100, 2, 16, 8, 32, [0, 5, 40, 40, 100], True, True, False,
                 id="packed-empty-h0-final"),
    pytest.param(2, 64, 2, 16, 16, 16, None, True, True, True, id="T64-C16-strong-decay"),
]


@pytest.mark.parametrize("B,T,H,K,V,C,cu,use_h0,final,strong", LIGHTNING)
def test_lightning_matches_naive(assert_close, B, T, H, K, V, C, cu, use_h0, final, strong):
    N = B if cu is None else len(cu) - 1
    shapes = [(B, T, H, K), (B, T, H, K), (B, T, H, V)] + [(N, H, K, V)] * use_h0
    inputs = leaves(*shapes, dtype=torch.float64)
    # strong: decays 0.5 .. 3 per token (e^-48 .. e^-3 across a chunk of 16 tokens)
    slopes = (torch.linspace(0.5, 3.0, H) if strong else alibi_slopes(H)).to(DEVICE, torch.float64)
    cu_t = None if cu is None else torch.tensor(cu, device=DEVICE)

    def run(op):
        return lambda q, k, v, h0=None: op(q, k, v, slopes, initial_state=h0,
                                           output_final_state=final, cu_seqlens=cu_t,
                                           chunk_size=C)

    ref = outputs_and_grads(run(lightning_attn_naive), inputs)
    compare(assert_close, ref, outputs_and_grads(run(lightning_attn_torch), inputs), 1e-10)


def test_lightning_matches_triton(assert_close):
    """fp32, packed with initial states (the context-parallel call) and a final state."""
    H, K, V = 2, 16, 16
    inputs = leaves((1, 45, H, K), (1, 45, H, K), (1, 45, H, V), (3, H, K, V), seed=3)
    slopes = alibi_slopes(H).to(DEVICE)
    cu = torch.tensor([0, 20, 21, 45], device=DEVICE, dtype=torch.int32)

    def run(op):
        return lambda q, k, v, h0: op(q, k, v, slopes, initial_state=h0, output_final_state=True,
                                      cu_seqlens=cu, chunk_size=16)

    compare(assert_close, outputs_and_grads(run(lightning_attn), inputs),
            outputs_and_grads(run(lightning_attn_torch), inputs), 1e-5)


INFLLM = [  # B, Tq, Tk, Hq, Hkv, dense_len, cu_seqlens
    pytest.param(2, 50, 50, 4, 2, 64, None, id="dense-batch"),
    pytest.param(1, 40, 90, 4, 1, 128, None, id="dense-offset-gqa4"),
    pytest.param(1, 101, 101, 4, 2, 64, None, id="sparse"),
    pytest.param(1, 70, 150, 2, 2, 64, None, id="sparse-offset"),
    pytest.param(1, 140, 140, 4, 2, 64, [0, 30, 130, 140], id="packed-dense-and-sparse"),
]


def infllm_run(op, Tq, Tk, dense_len, cu):
    cu_t = None if cu is None else torch.tensor(cu, device=DEVICE)
    return lambda q, k, v: op(q, k, v, dense_len=dense_len, position_offset=Tk - Tq,
                              cu_seqlens=cu_t, **SPARSE)


@pytest.mark.parametrize("B,Tq,Tk,Hq,Hkv,dense_len,cu", INFLLM)
def test_infllmv2_matches_naive(assert_close, B, Tq, Tk, Hq, Hkv, dense_len, cu):
    inputs = leaves((B, Tq, Hq, 16), (B, Tk, Hkv, 16), (B, Tk, Hkv, 16))
    ref = outputs_and_grads(infllm_run(naive.infllmv2_attention, Tq, Tk, dense_len, cu),
                            [x.detach().cpu().requires_grad_() for x in inputs])
    got = outputs_and_grads(infllm_run(infllmv2_attention_torch, Tq, Tk, dense_len, cu), inputs)
    compare(assert_close, ref, got, 1e-5)


@pytest.mark.parametrize("Tq,Tk,cu", [
    pytest.param(60, 124, None, id="sparse-offset"),
    pytest.param(120, 120, [0, 100, 120], id="packed-sparse-and-dense"),
])
def test_infllmv2_matches_triton(assert_close, Tq, Tk, cu):
    inputs = leaves((1, Tq, 4, 16), (1, Tk, 2, 16), (1, Tk, 2, 16), seed=2)
    compare(assert_close, outputs_and_grads(infllm_run(infllmv2_attention, Tq, Tk, 64, cu), inputs),
            outputs_and_grads(infllm_run(infllmv2_attention_torch, Tq, Tk, 64, cu), inputs), 1e-5)


@pytest.fixture
def fresh_kernels_log(monkeypatch):
    """resolve_kernels logs once per process and setting: start from an empty cache."""
    backend._log_kernels.cache_clear()
    yield lambda cuda: monkeypatch.setattr(backend, "has_cuda", lambda: cuda)
    backend._log_kernels.cache_clear()


@pytest.mark.parametrize("setting, cuda, choice, why", [
    ("auto", False, "torch", "no CUDA device: the chunked PyTorch ops, not the Triton interpreter"),
    ("auto", True, "triton", "CUDA is available"),
    ("triton", False, "triton", "as set, without CUDA: the Triton interpreter"),
    ("torch", True, "torch", "as set"),
])
def test_kernels_setting_picks_and_logs_once(fresh_kernels_log, caplog, setting, cuda, choice,
                                             why):
    fresh_kernels_log(cuda)
    with caplog.at_level(logging.INFO, logger=backend.__name__):
        assert kernel_ops(setting) is IMPLEMENTATIONS[choice]
        assert kernel_ops(setting).name == choice
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"model.kernels={setting}: the S/L attention runs the {choice} "
                               f"ops ({why}")


def test_kernels_setting_unknown_value():
    with pytest.raises(ValueError, match=r"model.kernels='interpreter'; use auto, triton or torch"):
        kernel_ops("interpreter")
