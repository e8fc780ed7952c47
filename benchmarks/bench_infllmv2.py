"""InfLLM-V2 sparse attention (selection + block-sparse kernel) vs torch SDPA causal attention.

    python benchmarks/bench_infllmv2.py            # GPU: bf16, T in 4K..128K
    python benchmarks/bench_infllmv2.py --tiny     # CPU Triton interpreter, fp32, tiny shapes
    python benchmarks/bench_infllmv2.py --smoke    # fewer and smaller still (the smoke test)

FLOPs: attention does 2 matmuls of 2·D FLOPs per (query, key, head) pair, so the forward is
4·D·pairs and forward+backward 3.5× that (the backward recomputes QKᵀ and adds 4 matmuls of the
same size: 2.5× the forward). Dense causal SDPA counts pairs = Hq·T·(T+1)/2. The sparse op counts
only attended blocks: pairs = block²·(query heads per group)·Σ_{query block, KV head} (valid
selected blocks), each block counted in full (the diagonal block is computed whole and masked).
The selection's own matmuls are not counted, but its time is included in the sparse timings.
Speedups are written only after the correctness check on the same device passes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from megatron_omni import platform  # noqa: E402

platform.use_triton_interpreter_without_cuda()  # before triton is imported
from benchmarks.common import (add_rates, causal_sdpa, kernel_benchmark_main,  # noqa: E402
                               low_precision, rel_rmse, time_ms)
from omni_kernels.infllmv2 import (block_sparse_attention, infllmv2_attention,  # noqa: E402
                                   naive, select_blocks)

# check_len: sequence length of the correctness check; warmup/iters: time_ms's call counts.
FULL = dict(seqlens=[4096, 8192, 32768, 65536, 131072], heads=32, kv_heads=2, head_dim=128,
            sparse=dict(block_size=64, topk=64, init_blocks=1, local_blocks=32, kernel_size=32,
                        kernel_stride=16, lse_kernel_size=128, lse_kernel_stride=64),
            check_len=1000, warmup=2, iters=5)
TINY = dict(seqlens=[64, 128], heads=4, kv_heads=2, head_dim=16,
            sparse=dict(block_size=16, topk=2, init_blocks=1, local_blocks=2, kernel_size=8,
                        kernel_stride=4, lse_kernel_size=32, lse_kernel_stride=16),
            check_len=100, warmup=1, iters=2)
SMOKE = dict(TINY, seqlens=[32], check_len=32, warmup=0, iters=1)


def qkv(T: int, cfg: dict, dtype: torch.dtype, device: str, seed: int = 0):
    gen = torch.Generator(device=device).manual_seed(seed)
    D = cfg["head_dim"]
    shapes = [(1, T, cfg["heads"], D)] + [(1, T, cfg["kv_heads"], D)] * 2
    return [torch.randn(s, generator=gen, device=device, dtype=torch.float32).to(dtype)
            .requires_grad_() for s in shapes]


def correctness(cfg: dict, device: str, T: int) -> dict:
    """Selection (fp32, exact) and block-sparse attention (fp32 and low precision, fwd and grads)
    against the naive references at a small shape: the benchmark's block and pooling sizes, 8
    query heads, and few enough slots (topk 2, local 2) that the selection is selective."""
    cfg = dict(cfg, heads=8, sparse=dict(cfg["sparse"], topk=2, local_blocks=2))
    sp = cfg["sparse"]
    q, k, _ = qkv(T, cfg, torch.float32, device)
    q = (q * 2).detach()
    idx = select_blocks(q, k, **sp)
    # the reference selection loops over tokens and heads: run it on the CPU
    same = torch.equal(idx.cpu(), naive.select_blocks(q.cpu(), k.cpu(), **sp))
    report = {"shape": (T, cfg["heads"], cfg["kv_heads"], cfg["head_dim"]),
              "selection_equal": bool(same)}
    for dtype, limit in zip((torch.float32, low_precision(device)), (1e-4, 1e-2)):
        q, k, v = qkv(T, cfg, dtype, device, seed=1)
        do = torch.randn_like(q)
        errs = {}
        for name, fn in (("fast", block_sparse_attention), ("ref", naive.block_sparse_attention)):
            o = fn(q, k, v, idx, sp["block_size"])[0]
            errs[name] = [o.detach()] + list(torch.autograd.grad(o, (q, k, v), do))
        worst = max(rel_rmse(a, b) for a, b in zip(errs["ref"], errs["fast"]))
        report[str(dtype).replace("torch.", "")] = {"max_rel_rmse": worst, "limit": limit}
        same = same and worst <= limit
    report["passed"] = bool(same)
    return report


def attended_pairs(q, k, sp: dict) -> int:
    idx = select_blocks(q, k, **sp)
    G = q.shape[2] // k.shape[2]
    return int((idx >= 0).sum()) * G * sp["block_size"] ** 2


def bench_one(T: int, cfg: dict, dtype: torch.dtype, device: str) -> dict:
    sp, D = cfg["sparse"], cfg["head_dim"]
    q, k, v = qkv(T, cfg, dtype, device)
    G = cfg["heads"] // cfg["kv_heads"]
    k_rep, v_rep = (x.detach().repeat_interleave(G, 2).requires_grad_() for x in (k, v))
    do = torch.randn_like(q)

    def sdpa():
        return causal_sdpa(*(x.transpose(1, 2) for x in (q, k_rep, v_rep)))

    def sparse():
        return infllmv2_attention(q, k, v, dense_len=0, **sp)

    warmup, iters = cfg["warmup"], cfg["iters"]
    row = {"T": T}
    with torch.no_grad():
        row["select_ms"] = time_ms(lambda: select_blocks(q, k, **sp), warmup, iters)
        row["sdpa_fwd_ms"] = time_ms(sdpa, warmup, iters)
        row["sparse_fwd_ms"] = time_ms(sparse, warmup, iters)
    row["sdpa_fwdbwd_ms"] = time_ms(lambda: sdpa().backward(do.transpose(1, 2)), warmup, iters)
    row["sparse_fwdbwd_ms"] = time_ms(lambda: sparse().backward(do), warmup, iters)
    dense_pairs = cfg["heads"] * T * (T + 1) // 2
    sparse_pairs = attended_pairs(q.detach(), k.detach(), sp)
    row["attended_fraction"] = sparse_pairs / dense_pairs
    flops = {(name, mode): 4 * D * pairs * mult
             for name, pairs in (("sdpa", dense_pairs), ("sparse", sparse_pairs))
             for mode, mult in (("fwd", 1.0), ("fwdbwd", 3.5))}
    return add_rates(row, flops, "sparse")


if __name__ == "__main__":
    kernel_benchmark_main("infllmv2", __doc__, dict(full=FULL, tiny=TINY, smoke=SMOKE),
                          correctness, bench_one)
