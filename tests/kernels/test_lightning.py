"""Lightning attention: chunked Triton op against the float64 references (odd sizes, forward and
every gradient), chunk/state chaining, packed batches, argument errors and slope helpers.

Every kernel output is allocated NaN-filled here (see `_poison_outputs`), so memory a kernel
does not write fails `assert_close`.
"""
import inspect

import pytest
import torch

from omni_kernels.lightning import (alibi_slopes, chunk, lightning_attn, lightning_attn_naive,
                                    lightning_attn_quadratic, minimax_slopes)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    def nan_empty(shape, like, dtype=None):
        return torch.full(shape, float("nan"), device=like.device,
                          dtype=like.dtype if dtype is None else dtype)
    monkeypatch.setattr(chunk, "_empty", nan_empty)


def _inputs(B, T, H, K, V, dtype=torch.float32, h0_batch=None, seed=0):
    """q, k, v [B, T, H, *] and an initial state [h0_batch, H, K, V] (None if h0_batch is None),
    all requiring grad."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, d, generator=g, dtype=dtype) for d in (K, K, V))
    h0 = None if h0_batch is None else torch.randn(h0_batch, H, K, V, generator=g, dtype=dtype)
    return [x if x is None else x.to(DEVICE).requires_grad_() for x in (q, k, v, h0)]


def _run(op, q, k, v, slopes, h0, seed=1, **kwargs):
    """Forward, then gradients of a random projection of o (and the final state): returns
    {name: tensor} for o, the final state and the gradients of q, k, v, h0."""
    o, final = op(q, k, v, slopes, initial_state=h0, **kwargs)
    g = torch.Generator().manual_seed(seed)
    loss = (o.float() * torch.randn(o.shape, generator=g).to(DEVICE)).sum()
    if final is not None:
        loss = loss + (final * torch.randn(final.shape, generator=g).to(DEVICE)).sum()
    leaves = [x for x in (q, k, v, h0) if x is not None]
    grads = torch.autograd.grad(loss, leaves)
    names = ["dq", "dk", "dv", "dh0"][:len(leaves)]
    return {"o": o, "final": final, **dict(zip(names, grads))}


def _compare(assert_close, ref, out, ratio=1e-4):
    assert ref.keys() == out.keys()
    for name, r in ref.items():
        if r is None:
            assert out[name] is None, f"{name}: expected None"
        else:
            assert_close(name, r.detach(), out[name].detach(), ratio)


CASES = [  # B, T, H, K, V, BT, initial state, final state, slopes
    pytest.param(2, 10, 2, 16, 16, 16, False, False, "alibi", id="T10<BT16-K16-V16"),
    pytest.param(1, 63, 3, 32, 16, 16, True, True, "alibi", id="T63-BT16-K32-V16-h0-final"),
    pytest.param(2, 100, 2, 16, 32, 32, False, True, "strong", id="T100-BT32-K16-V32-final"),
    pytest.param(1, 64, 2, 8, 24, 32, True, False, "strong", id="T64-BT32-K8-V24-h0"),
    pytest.param(1, 80, 2, 64, 64, 64, True, True, "alibi", id="T80-BT64-K64-V64-h0-final"),
]


def _slopes(kind, H):
    """ALiBi slopes, or strong decays 0.5 .. 3 (down to e^-96 across a chunk of 32)."""
    if kind == "alibi":
        return alibi_slopes(H, DEVICE)
    return torch.linspace(0.5, 3.0, H, device=DEVICE)


@pytest.mark.parametrize("B,T,H,K,V,BT,use_h0,final,slopes", CASES)
def test_matches_naive(assert_close, B, T, H, K, V, BT, use_h0, final, slopes):
    q, k, v, h0 = _inputs(B, T, H, K, V, h0_batch=B if use_h0 else None)
    s = _slopes(slopes, H)
    ref = _run(lightning_attn_naive, q, k, v, s, h0, output_final_state=final)
    out = _run(lightning_attn, q, k, v, s, h0, output_final_state=final, chunk_size=BT)
    _compare(assert_close, ref, out)


def test_several_tiles_per_head_dim(assert_close, monkeypatch):
    """Tiles of 16 over K = 40, V = 24: every kernel loops over K / V blocks, last one partial."""
    for tiles in ("_SWEEP_TILES", "_OUTPUT_TILES", "_DQK_TILES"):
        monkeypatch.setitem(getattr(chunk, tiles), "BK", 16)
        monkeypatch.setitem(getattr(chunk, tiles), "BV", 16)
    q, k, v, h0 = _inputs(1, 40, 2, 40, 24, h0_batch=1)
    s = _slopes("alibi", 2)
    ref = _run(lightning_attn_naive, q, k, v, s, h0, output_final_state=True)
    out = _run(lightning_attn, q, k, v, s, h0, output_final_state=True, chunk_size=16)
    _compare(assert_close, ref, out)


def test_explicit_scale(assert_close):
    q, k, v, h0 = _inputs(1, 40, 2, 16, 16, h0_batch=1)
    s = alibi_slopes(2, DEVICE)
    ref = _run(lightning_attn_naive, q, k, v, s, h0, scale=0.3, output_final_state=True)
    out = _run(lightning_attn, q, k, v, s, h0, scale=0.3, output_final_state=True, chunk_size=16)
    _compare(assert_close, ref, out)


@pytest.mark.parametrize("use_h0", [False, True], ids=["zero-state", "h0"])
def test_recurrence_equals_quadratic(assert_close, use_h0):
    q, k, v, h0 = _inputs(2, 37, 3, 8, 12, dtype=torch.float64, h0_batch=2 if use_h0 else None)
    s = torch.tensor([0.0, 0.3, 2.0], dtype=torch.float64, device=DEVICE)
    ref = _run(lightning_attn_naive, q, k, v, s, h0, output_final_state=True)
    out = _run(lightning_attn_quadratic, q, k, v, s, h0, output_final_state=True)
    _compare(assert_close, ref, out, ratio=1e-12)


def test_split_sequence_carries_state(assert_close):
    """Running [a; b] equals running a, then b from a's final state: forward and gradients."""
    q, k, v, h0 = _inputs(1, 50, 2, 16, 16, h0_batch=1)
    s = _slopes("strong", 2)
    whole = _run(lightning_attn, q, k, v, s, h0, output_final_state=True, chunk_size=16)

    def two_calls(q, k, v, slopes, initial_state, output_final_state, chunk_size):
        o_a, h_a = lightning_attn(q[:, :20], k[:, :20], v[:, :20], slopes,
                                  initial_state=initial_state, output_final_state=True,
                                  chunk_size=chunk_size)
        o_b, h_b = lightning_attn(q[:, 20:], k[:, 20:], v[:, 20:], slopes, initial_state=h_a,
                                  output_final_state=output_final_state, chunk_size=chunk_size)
        return torch.cat([o_a, o_b], dim=1), h_b

    split = _run(two_calls, q, k, v, s, h0, output_final_state=True, chunk_size=16)
    _compare(assert_close, whole, split)


@pytest.mark.parametrize("index_dtype,use_h0", [(torch.int32, True), (torch.int64, False)],
                         ids=["int32-h0", "int64"])
def test_varlen_matches_per_sequence_naive(assert_close, index_dtype, use_h0):
    """Packed sequences (one empty, one of a single token) restart the state at each boundary."""
    bounds = [0, 5, 5, 40, 41, 70]
    N, H, K, V = len(bounds) - 1, 2, 16, 16
    q, k, v, h0 = _inputs(1, bounds[-1], H, K, V, h0_batch=N if use_h0 else None)
    s = alibi_slopes(H, DEVICE)

    def per_sequence(q, k, v, slopes, initial_state, output_final_state):
        outs, finals = [], []
        for n, (bos, eos) in enumerate(zip(bounds, bounds[1:])):
            h0_n = None if initial_state is None else initial_state[n:n + 1]
            if bos == eos:  # an empty sequence passes its state through
                finals.append(q.new_zeros(1, H, K, V) if h0_n is None else h0_n)
                continue
            o_n, final_n = lightning_attn_naive(q[:, bos:eos], k[:, bos:eos], v[:, bos:eos],
                                                slopes, initial_state=h0_n,
                                                output_final_state=output_final_state)
            outs.append(o_n)
            finals.append(final_n)
        return torch.cat(outs, dim=1), torch.cat(finals)

    ref = _run(per_sequence, q, k, v, s, h0, output_final_state=True)
    cu_seqlens = torch.tensor(bounds, dtype=index_dtype, device=DEVICE)
    out = _run(lightning_attn, q, k, v, s, h0, output_final_state=True, cu_seqlens=cu_seqlens,
               chunk_size=16)
    _compare(assert_close, ref, out)


def test_bf16_forward(assert_close):
    """bf16 inputs against the fp32 reference on the same (bf16-rounded) values."""
    q, k, v, h0 = (x.detach().bfloat16() for x in _inputs(1, 70, 2, 32, 32, h0_batch=1))
    s = alibi_slopes(2, DEVICE)
    o, final = lightning_attn(q, k, v, s, initial_state=h0, output_final_state=True,
                              chunk_size=32)
    ref_o, ref_final = lightning_attn_naive(q.float(), k.float(), v.float(), s,
                                            initial_state=h0.float(), output_final_state=True)
    assert o.dtype == torch.bfloat16 and final.dtype == torch.float32
    assert_close("o", ref_o, o, ratio=1e-2)
    assert_close("final", ref_final, final, ratio=1e-2)


def test_signatures_match():
    sig = inspect.signature(lightning_attn)
    assert inspect.signature(lightning_attn_naive) == sig
    assert inspect.signature(lightning_attn_quadratic) == sig


def _bad_args(case):
    """Keyword arguments for lightning_attn (CPU tensors: argument checks come before the
    device check), valid except for the one named by `case`."""
    q, k, v = (torch.randn(1, 8, 2, 16) for _ in range(3))
    args = dict(q=q, k=k, v=v, slopes=alibi_slopes(2))
    bad = {
        "q-3d": dict(q=q[0]),
        "k-shape": dict(k=torch.randn(1, 8, 2, 32)),
        "v-heads": dict(v=torch.randn(1, 8, 3, 16)),
        "dtype-mix": dict(v=v.double()),
        "float64": dict(q=q.double(), k=k.double(), v=v.double()),
        "slopes-shape": dict(slopes=torch.ones(3)),
        "slopes-grad": dict(slopes=torch.ones(2, requires_grad=True)),
        "h0-shape": dict(initial_state=torch.zeros(1, 2, 16, 8)),
        "chunk-size": dict(chunk_size=24),
        "cu-dtype": dict(cu_seqlens=torch.tensor([0.0, 8.0])),
        "cu-end": dict(cu_seqlens=torch.tensor([0, 3, 7])),
        "cu-batch": dict(q=torch.randn(2, 8, 2, 16), k=torch.randn(2, 8, 2, 16),
                         v=torch.randn(2, 8, 2, 16), cu_seqlens=torch.tensor([0, 8])),
    }[case]
    return {**args, **bad}


@pytest.mark.parametrize("case,match", [
    ("q-3d", r"q must be a 4-D tensor \[B, T, H, D\]"),
    ("k-shape", r"k must have the shape of q"),
    ("v-heads", r"v must be \[B, T, H, V\]"),
    ("dtype-mix", r"q, k, v must share one dtype"),
    ("float64", r"q, k, v dtype must be torch.float32, torch.bfloat16"),
    ("slopes-shape", r"slopes must be a floating tensor \[H\] = \[2\]"),
    ("slopes-grad", r"slopes must not require grad"),
    ("h0-shape", r"initial_state must be a floating tensor \[N, H, K, V\] = \[1, 2, 16, 16\]"),
    ("chunk-size", r"chunk_size must be a power of two >= 16, got 24"),
    ("cu-dtype", r"cu_seqlens must be an int32/int64 tensor"),
    ("cu-end", r"cu_seqlens must rise from 0 to T = 8"),
    ("cu-batch", r"batch size must be 1, got 2"),
])
def test_bad_arguments_raise(case, match):
    with pytest.raises(ValueError, match=match):
        lightning_attn(**_bad_args(case))


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v = (torch.randn(1, 8, 2, 16) for _ in range(3))
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        lightning_attn(q, k, v, alibi_slopes(2))


def test_naive_accepts_float64():
    q, k, v, _ = _inputs(1, 8, 2, 16, 16, dtype=torch.float64)
    o, _ = lightning_attn_naive(q, k, v, alibi_slopes(2, DEVICE).double())
    assert o.dtype == torch.float64


def test_alibi_slopes_exact():
    assert torch.equal(alibi_slopes(8), torch.tensor([2.0 ** -(h + 1) for h in range(8)]))
    assert torch.equal(alibi_slopes(4), torch.tensor([2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8]))
    assert alibi_slopes(1).tolist() == [2.0 ** -8]


def test_minimax_slopes_exact():
    alibi = [2.0 ** -(h + 1) for h in range(8)]
    for layer, factor in [(0, 1.0 + 1e-5), (1, 0.5 + 1e-5), (2, 1e-5)]:
        want = torch.tensor([a * factor for a in alibi], dtype=torch.float64).float()
        assert torch.equal(minimax_slopes(8, layer, 3), want), layer
    single = torch.tensor([a * (1.0 + 1e-5) for a in alibi], dtype=torch.float64).float()
    assert torch.equal(minimax_slopes(8, 0, 1), single)
    with pytest.raises(ValueError, match=r"layer_idx must be in \[0, 3\), got 3"):
        minimax_slopes(8, 3, 3)
