"""InfLLM-V2 kernels (Triton; the interpreter on CPU) against the float64 references in naive.py.

Sizes are tiny and odd (block 16, compression kernel 8 / stride 4, lse kernel 32 / stride 16) so
that partial blocks, offsets and GQA groups all show while the interpreter stays fast. With CUDA
the kernels run compiled on the GPU; the references always run on CPU copies of the inputs.
"""
import inspect
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from omni_kernels import infllmv2 as fast
from omni_kernels.infllmv2 import naive

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMALL = dict(block_size=16, kernel_size=8, kernel_stride=4, lse_kernel_size=32,
             lse_kernel_stride=16)


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch):
    """torch.empty / empty_like come back NaN-filled (floats) so unwritten memory shows."""
    real_empty, real_like = torch.empty, torch.empty_like

    def fill(x):
        return x.fill_(float("nan")) if x.is_floating_point() else x.fill_(-7)

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: fill(real_empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: fill(real_like(*a, **kw)))


def make_qkv(B, Tq, Tk, Hq, Hkv, D, seed=0, dtype=torch.float32, q_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, Tq, Hq, D, generator=gen) * q_scale).to(DEVICE, dtype).requires_grad_()
    k = torch.randn(B, Tk, Hkv, D, generator=gen).to(DEVICE, dtype).requires_grad_()
    v = torch.randn(B, Tk, Hkv, D, generator=gen).to(DEVICE, dtype).requires_grad_()
    return q, k, v


def random_block_idx(len_q, len_k, block_size, num_kv_heads, slots, seed=0):
    """[NQB, Hkv, slots]: own block + random distinct earlier blocks, ascending, −1 padded."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for blk in range((len_k - len_q) // block_size, (len_k - 1) // block_size + 1):
        per_head = []
        for _ in range(num_kv_heads):
            chosen = sorted(torch.randperm(blk, generator=gen)[: slots - 1].tolist() + [blk])
            per_head.append(chosen + [-1] * (slots - len(chosen)))
        rows.append(per_head)
    return torch.tensor(rows, dtype=torch.int32, device=DEVICE)


def check_fwd_bwd(assert_close, ref_fn, fast_fn, inputs, ratio=1e-4):
    """Compare outputs and the gradients of every input under one random output gradient (the
    reference on CPU copies of the inputs)."""
    ref_inputs = [x.detach().cpu().requires_grad_() for x in inputs]
    out_ref, out = ref_fn(*ref_inputs), fast_fn(*inputs)
    out_ref, out = (out_ref, out) if isinstance(out, tuple) else ((out_ref,), (out,))
    do = torch.randn(out[0].shape, generator=torch.Generator().manual_seed(1)).to(out[0].dtype)
    grads_ref = torch.autograd.grad(out_ref[0], ref_inputs, do)
    grads = torch.autograd.grad(out[0], inputs, do.to(DEVICE))
    for i, (a, b) in enumerate(zip(out_ref, out)):
        assert_close(f"out{i}", a.detach(), b.detach().cpu(), ratio)
    for name, a, b in zip(("dq", "dk", "dv"), grads_ref, grads):
        assert_close(name, a, b.cpu(), ratio)


def dense_reference(q, k, v):
    """Causal attention in float64 with the queries at the last positions of the keys."""
    Tq, Tk, G = q.shape[1], k.shape[1], q.shape[2] // k.shape[2]
    mask = torch.arange(Tk)[None, :] <= torch.arange(Tk - Tq, Tk)[:, None]
    o = F.scaled_dot_product_attention(
        q.double().transpose(1, 2), k.double().repeat_interleave(G, 2).transpose(1, 2),
        v.double().repeat_interleave(G, 2).transpose(1, 2), attn_mask=mask)
    return o.transpose(1, 2).to(q.dtype)


@pytest.mark.parametrize("name", ["compress_keys", "select_blocks", "block_sparse_attention",
                                  "infllmv2_attention"])
def test_signatures_match_naive(name):
    assert inspect.signature(getattr(fast, name)) == inspect.signature(getattr(naive, name))


@pytest.mark.parametrize("T,kernel,stride", [(37, 8, 4), (7, 8, 4), (64, 32, 16), (50, 6, 3)])
def test_compress_exact(T, kernel, stride):
    # multiples of 1/16 in [-4, 4): window sums and the division are exact in float32
    k = torch.randint(-64, 64, (2, T, 2, 24), generator=torch.Generator().manual_seed(0)) / 16
    out = fast.compress_keys(k.to(DEVICE), kernel, stride).cpu()
    assert torch.equal(out, naive.compress_keys(k, kernel, stride))
    assert out.shape[1] == (0 if T < kernel else (T - kernel) // stride + 1)


def test_compress_packed_matches_per_sequence():
    k = torch.randint(-64, 64, (1, 61, 2, 16), generator=torch.Generator().manual_seed(0)) / 16
    cu = torch.tensor([0, 5, 30, 61], dtype=torch.int32, device=DEVICE)
    out = fast.compress_keys(k.to(DEVICE), 8, 4, cu).cpu()
    ref = torch.cat([naive.compress_keys(k[:, s:e], 8, 4)[0] for s, e in [(0, 5), (5, 30),
                                                                          (30, 61)]])
    assert torch.equal(out[0], ref)
    assert fast.compressed_cu_seqlens(cu, 8, 4).tolist() == [0, 0, 5, 11]


SELECT_CASES = {  # B, Tq, Tk, Hq, Hkv, topk, init_blocks, local_blocks
    "shorter-than-block": (1, 11, 11, 2, 1, 2, 1, 1),
    "one-head-per-group": (1, 77, 77, 2, 2, 2, 1, 1),
    "three-heads-offset": (2, 40, 93, 3, 1, 2, 1, 2),
    "no-init-block": (1, 70, 70, 2, 1, 2, 0, 1),
    "topk-beyond-blocks": (1, 70, 70, 2, 1, 20, 1, 1),
}


@pytest.mark.parametrize("case", SELECT_CASES.values(), ids=SELECT_CASES.keys())
def test_select_matches_naive(case):
    B, Tq, Tk, Hq, Hkv, topk, init, local = case
    q, k, _ = make_qkv(B, Tq, Tk, Hq, Hkv, 24, q_scale=2.0)
    args = (topk, init, local)
    idx = fast.select_blocks(q, k, SMALL["block_size"], *args, *list(SMALL.values())[1:])
    ref = naive.select_blocks(q.cpu(), k.cpu(), SMALL["block_size"], *args,
                              *list(SMALL.values())[1:])
    assert idx.dtype == torch.int32 and idx.shape == ref.shape
    assert torch.equal(idx.cpu(), ref)


def test_select_packed_matches_per_sequence():
    q, k, _ = make_qkv(1, 110, 110, 4, 2, 16, q_scale=2.0)
    cu = torch.tensor([0, 13, 45, 110], dtype=torch.int32, device=DEVICE)
    idx = fast.select_blocks(q, k, topk=2, init_blocks=1, local_blocks=1, cu_seqlens_q=cu,
                             cu_seqlens_k=cu, **SMALL)
    q, k = q.cpu(), k.cpu()
    ref = torch.cat([naive.select_blocks(q[:, s:e], k[:, s:e], topk=2, init_blocks=1,
                                         local_blocks=1, **SMALL)[0]
                     for s, e in [(0, 13), (13, 45), (45, 110)]])
    assert torch.equal(idx[0].cpu(), ref)


def test_select_ties_pick_lower_blocks():
    # q = 0: every visible window scores the same, so all fully visible blocks tie
    q, k, _ = make_qkv(1, 150, 150, 2, 1, 16)
    q = torch.zeros_like(q)
    idx = fast.select_blocks(q, k, topk=2, init_blocks=1, local_blocks=2, **SMALL)
    assert torch.equal(idx, fast.select_blocks(q, k, topk=2, init_blocks=1, local_blocks=2,
                                               **SMALL))
    idx = idx.cpu()
    assert torch.equal(idx, naive.select_blocks(q.cpu(), k.cpu(), topk=2, init_blocks=1,
                                                local_blocks=2, **SMALL))
    assert idx[0, 9, 0].tolist() == [0, 1, 2, 8, 9]  # init 0, tied 1 and 2, local 8 and 9
    assert idx[0, 1, 0].tolist() == [0, 1, -1, -1, -1]


STAGE2_CASES = {  # B, Tq, Tk, Hq, Hkv, D, slots, block_size
    "shorter-than-block": (1, 11, 11, 2, 1, 16, 2, 16),
    "one-head-per-group-d24": (1, 45, 45, 2, 2, 24, 2, 16),
    "three-heads-offset": (1, 30, 61, 3, 1, 16, 3, 16),
    "batch2-slots-beyond-blocks": (2, 37, 37, 4, 2, 16, 4, 16),
    "block32-query-subtiles": (1, 70, 90, 2, 1, 16, 2, 32),
}


@pytest.mark.parametrize("case", STAGE2_CASES.values(), ids=STAGE2_CASES.keys())
def test_block_sparse_attention_matches_naive(assert_close, case):
    B, Tq, Tk, Hq, Hkv, D, slots, bs = case
    idx = torch.stack([random_block_idx(Tq, Tk, bs, Hkv, slots, seed=b) for b in range(B)])
    check_fwd_bwd(assert_close, lambda *x: naive.block_sparse_attention(*x, idx, bs),
                  lambda *x: fast.block_sparse_attention(*x, idx, bs),
                  make_qkv(B, Tq, Tk, Hq, Hkv, D))


def test_block_sparse_attention_packed_matches_per_sequence(assert_close):
    bs, bounds_q, bounds_k = SMALL["block_size"], [0, 9, 29, 59], [0, 9, 49, 80]
    q, k, v = make_qkv(1, 59, 80, 4, 2, 16)
    idx = [random_block_idx(eq - sq, ek - sk, bs, 2, 3, seed=i) for i, (sq, eq, sk, ek) in
           enumerate(zip(bounds_q, bounds_q[1:], bounds_k, bounds_k[1:]))]

    def per_sequence(q, k, v):
        outs = [naive.block_sparse_attention(q[:, sq:eq], k[:, sk:ek], v[:, sk:ek], i[None], bs)
                for i, sq, eq, sk, ek in zip(idx, bounds_q, bounds_q[1:], bounds_k,
                                             bounds_k[1:])]
        return tuple(torch.cat(parts, 1) for parts in zip(*outs))

    cu_q, cu_k = torch.tensor(bounds_q, device=DEVICE), torch.tensor(bounds_k, device=DEVICE)
    check_fwd_bwd(assert_close, per_sequence,
                  lambda *x: fast.block_sparse_attention(*x, torch.cat(idx)[None], bs, cu_q,
                                                         cu_k), (q, k, v))


def test_block_sparse_attention_fp16(assert_close):
    # the interpreter multiplies bfloat16 as raw bits, so low precision is checked with float16
    q, k, v = make_qkv(1, 40, 40, 2, 1, 16, dtype=torch.float16)
    idx = random_block_idx(40, 40, 16, 1, 2)[None]
    check_fwd_bwd(assert_close, lambda *x: naive.block_sparse_attention(*x, idx, 16),
                  lambda *x: fast.block_sparse_attention(*x, idx, 16), (q, k, v), ratio=5e-3)


@pytest.mark.parametrize("offset", [0, 19])
def test_all_blocks_equal_dense(assert_close, offset):
    inputs = make_qkv(1, 50, 50 + offset, 4, 2, 16)
    check_fwd_bwd(assert_close, dense_reference,
                  lambda *x: fast.infllmv2_attention(*x, dense_len=0, topk=10, init_blocks=1,
                                                     local_blocks=1, position_offset=offset,
                                                     **SMALL), inputs)


@pytest.mark.parametrize("offset", [0, 19])
def test_dense_below_dense_len(assert_close, offset):
    inputs = make_qkv(1, 50, 50 + offset, 2, 1, 16)
    check_fwd_bwd(assert_close, dense_reference,
                  lambda *x: fast.infllmv2_attention(*x, dense_len=100, topk=0, init_blocks=0,
                                                     local_blocks=1, position_offset=offset,
                                                     **SMALL), inputs)


def test_infllmv2_sparse_matches_naive(assert_close):
    kwargs = dict(dense_len=64, topk=1, init_blocks=1, local_blocks=1, position_offset=37,
                  **SMALL)
    check_fwd_bwd(assert_close, lambda *x: naive.infllmv2_attention(*x, **kwargs),
                  lambda *x: fast.infllmv2_attention(*x, **kwargs),
                  make_qkv(1, 60, 97, 4, 2, 16, q_scale=2.0))


def test_infllmv2_packed_matches_per_sequence(assert_close):
    # dense (3 blocks, more than the 2 sparse slots), dense shorter than a block, sparse
    bounds = [0, 40, 45, 130]
    kwargs = dict(dense_len=48, topk=1, init_blocks=0, local_blocks=1, **SMALL)

    def per_sequence(q, k, v):
        return torch.cat([naive.infllmv2_attention(q[:, s:e], k[:, s:e], v[:, s:e], **kwargs)
                          for s, e in zip(bounds, bounds[1:])], 1)

    cu = torch.tensor(bounds, dtype=torch.int32, device=DEVICE)
    check_fwd_bwd(assert_close, per_sequence,
                  lambda *x: fast.infllmv2_attention(*x, cu_seqlens=cu, **kwargs),
                  make_qkv(1, 130, 130, 2, 1, 16, q_scale=2.0))


def _call(q_shape=(1, 20, 4, 16), k_shape=(1, 20, 2, 16), v_shape=None, **kwargs):
    q, k = torch.randn(q_shape, device=DEVICE), torch.randn(k_shape, device=DEVICE)
    v = torch.randn(v_shape or k_shape, device=DEVICE)
    return fast.infllmv2_attention(q, k, v, **{**SMALL, **kwargs})


ERROR_CASES = {
    "q-not-4d": (dict(q_shape=(20, 4, 16)), "q must be 4-D"),
    "heads-not-grouped": (dict(q_shape=(1, 20, 3, 16)), "multiple of k heads"),
    "head-dim-mismatch": (dict(q_shape=(1, 20, 4, 8)), "share batch and head_dim"),
    "v-shape": (dict(v_shape=(1, 20, 2, 8)), "v must have k's shape"),
    "offset-length": (dict(position_offset=3), r"position_offset \(3\)"),
    "cu-with-batch": (dict(q_shape=(2, 20, 4, 16), k_shape=(2, 20, 2, 16),
                           cu_seqlens=torch.tensor([0, 20])), "packed"),
    "cu-with-offset": (dict(cu_seqlens=torch.tensor([0, 20]), position_offset=1),
                       "position_offset must be 0"),
    "cu-bad-total": (dict(cu_seqlens=torch.tensor([0, 15])), "cu_seqlens_q must rise"),
    "block-size": (dict(block_size=24), "block_size must be a power of two"),
    "kernel-stride": (dict(kernel_size=10), "kernel_size"),
    "local-blocks": (dict(local_blocks=0), "local_blocks must be >= 1"),
}


@pytest.mark.parametrize("kwargs,match", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_errors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _call(**kwargs)


def test_block_idx_shape_error():
    q, k, v = make_qkv(1, 20, 20, 2, 1, 16)
    with pytest.raises(ValueError, match="block_idx must be int32"):
        fast.block_sparse_attention(q, k, v, torch.zeros(1, 1, 1, 2, dtype=torch.int32,
                                                         device=DEVICE), 16)


_COMPILE_SCRIPT = """
import inspect, triton
from triton.backends.compiler import GPUTarget
from omni_kernels.infllmv2 import block_sparse_kernels as ak, compress, select
BLOCK = dict(BS=64, BLOCK_D=128)
KERNELS = [(ak._fwd_kernel, dict(BLOCK, BLOCK_K=128)), (ak._dq_kernel, dict(BLOCK, BLOCK_K=128)),
           (ak._dkdv_kernel, dict(BLOCK, BLOCK_Q=16)),
           (select._lse_kernel, dict(BLOCK, KERNEL=128, STRIDE=64, BLOCK_C=64)),
           (select._block_score_kernel, dict(BLOCK, KERNEL=32, STRIDE=16, POOL_K=5, POOL_S=4,
                                             POOL_PAD=1, BLOCK_N=64)),
           (compress._compress_kernel, dict(KERNEL=32, STRIDE=16, BLOCK_C=32, BLOCK_D=128))]
def arg_type(name, consts):
    if name in consts: return "constexpr"
    if name in ("lse", "delta", "score"): return "*fp32"
    if name.startswith(("cu_", "qb_", "kb_", "csr_", "block_idx")): return "*i32"
    if name in ("q", "k", "v", "o", "do", "dq", "dk", "dv", "kc", "out"): return "*bf16"
    return "fp32" if name == "scale" else "i32"
for fn, consts in KERNELS:
    sig = {n: arg_type(n, consts) for n in inspect.signature(fn.fn).parameters}
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                            options=dict(num_warps=8, num_stages=2))
    assert kernel.metadata.shared <= 227 * 1024, (fn.fn.__name__, kernel.metadata.shared)
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU runs the kernels themselves")
def test_kernels_compile_for_sm90():
    """The interpreter accepts code the compiler rejects: compile every kernel for an H100
    (bf16, block 64, head dim 128) with Triton's bundled ptxas, no GPU needed."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
