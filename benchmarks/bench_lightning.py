"""Lightning attention (chunked Triton) vs torch SDPA causal attention.

    python benchmarks/bench_lightning.py            # GPU: bf16, B=1, H=32, D=128, T in 4K..128K
    python benchmarks/bench_lightning.py --tiny     # CPU Triton interpreter, fp32, tiny shapes
    python benchmarks/bench_lightning.py --smoke    # fewer and smaller still (the smoke test)

FLOPs (2 per multiply-add, per batch and head):
- SDPA causal: the forward does 2 matmuls of 2·D FLOPs per (query, key) pair over T·(T+1)/2
  pairs, 4·D·T·(T+1)/2; forward+backward is 3.5× that (the backward recomputes QKᵀ and adds 4
  matmuls of the same size).
- Lightning: the matmuls of the chunked algorithm, each counted once, over NT = ceil(T/C) chunks
  of C tokens (the last chunk counted full, the masked upper triangle included). Per chunk the
  forward does QKᵀ (2C²K), (QKᵀ⊙D)V (2C²V), Q·S (2CKV) and the state update KᵀV (2CKV):
  2C²(K+V) + 4CKV. The backward adds the state recompute (2CKV), the reverse state-gradient
  sweep (2CKV), dV (2C²K + 2C²V + 2CKV) and dQ, dK (2C²V + 4C²K + 4CKV): 2C²(3K+2V) + 10CKV.
  Recomputation across K / V tiles inside a kernel is not counted.
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
from omni_kernels.lightning import (alibi_slopes, lightning_attn,  # noqa: E402
                                    lightning_attn_naive)

# check_len: sequence length of the correctness check; warmup/iters: time_ms's call counts.
FULL = dict(seqlens=[4096, 8192, 32768, 65536, 131072], heads=32, head_dim=128, chunk_size=64,
            check_len=1000, warmup=2, iters=10)
TINY = dict(seqlens=[64, 128], heads=2, head_dim=32, chunk_size=32, check_len=100, warmup=1,
            iters=2)
SMOKE = dict(seqlens=[24], heads=2, head_dim=16, chunk_size=16, check_len=24, warmup=0, iters=1)


def qkv(T: int, H: int, D: int, dtype: torch.dtype, device: str, seed: int = 0):
    gen = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(1, T, H, D, generator=gen, device=device).to(dtype).requires_grad_()
            for _ in range(3)]


def correctness(cfg: dict, device: str, T: int) -> dict:
    """The Triton op against the float64 recurrence at a small shape with an initial and a final
    state: fp32 forward and all gradients (limit 1e-4), and the low-precision forward (1e-2, on
    the same rounded inputs)."""
    H, D, C = 2, min(cfg["head_dim"], 64), cfg["chunk_size"]
    slopes = alibi_slopes(H, device)
    q, k, v = qkv(T, H, D, torch.float32, device, seed=1)
    h0 = torch.randn(1, H, D, D, device=device, requires_grad=True)
    do, dfinal = torch.randn_like(v), torch.randn_like(h0)
    results = {}
    for name, op in (("ref", lightning_attn_naive), ("fast", lightning_attn)):
        o, final = op(q, k, v, slopes, initial_state=h0, output_final_state=True, chunk_size=C)
        grads = torch.autograd.grad((o, final), (q, k, v, h0), (do, dfinal))
        results[name] = [o.detach(), final.detach(), *grads]
    fp32 = max(rel_rmse(a, b) for a, b in zip(results["ref"], results["fast"]))
    low = low_precision(device)
    q, k, v = (x.detach().to(low) for x in (q, k, v))
    o_low, _ = lightning_attn(q, k, v, slopes, chunk_size=C)
    o_ref, _ = lightning_attn_naive(q.float(), k.float(), v.float(), slopes)
    low_err = rel_rmse(o_ref, o_low)
    return {"shape": dict(T=T, H=H, D=D, chunk_size=C),
            "float32": {"max_rel_rmse": fp32, "limit": 1e-4},
            str(low).replace("torch.", ""): {"rel_rmse_fwd": low_err, "limit": 1e-2},
            "passed": fp32 <= 1e-4 and low_err <= 1e-2}


def lightning_flops(T: int, H: int, D: int, C: int, backward: bool) -> float:
    """Matmul FLOPs of the chunked algorithm (module docstring), batch 1, K = V = D."""
    per_chunk = 2 * C * C * (2 * D) + 4 * C * D * D
    if backward:
        per_chunk += 2 * C * C * (5 * D) + 10 * C * D * D
    return H * -(-T // C) * per_chunk


def bench_one(T: int, cfg: dict, dtype: torch.dtype, device: str) -> dict:
    H, D, C = cfg["heads"], cfg["head_dim"], cfg["chunk_size"]
    q, k, v = qkv(T, H, D, dtype, device)
    q_t, k_t, v_t = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
    slopes = alibi_slopes(H, device)
    do = torch.randn_like(v)
    do_t = do.transpose(1, 2).contiguous()

    def sdpa():
        return causal_sdpa(q_t, k_t, v_t)

    def lightning():
        return lightning_attn(q, k, v, slopes, chunk_size=C)[0]

    warmup, iters = cfg["warmup"], cfg["iters"]
    row = {"T": T}
    with torch.no_grad():
        row["sdpa_fwd_ms"] = time_ms(sdpa, warmup, iters)
        row["lightning_fwd_ms"] = time_ms(lightning, warmup, iters)
    row["sdpa_fwdbwd_ms"] = time_ms(
        lambda: torch.autograd.grad(sdpa(), (q_t, k_t, v_t), do_t), warmup, iters)
    row["lightning_fwdbwd_ms"] = time_ms(
        lambda: torch.autograd.grad(lightning(), (q, k, v), do), warmup, iters)
    sdpa_fwd = 4 * D * H * T * (T + 1) / 2
    flops = {("sdpa", "fwd"): sdpa_fwd, ("sdpa", "fwdbwd"): 3.5 * sdpa_fwd,
             ("lightning", "fwd"): lightning_flops(T, H, D, C, backward=False),
             ("lightning", "fwdbwd"): lightning_flops(T, H, D, C, backward=True)}
    return add_rates(row, flops, "lightning")


if __name__ == "__main__":
    kernel_benchmark_main("lightning", __doc__, dict(full=FULL, tiny=TINY, smoke=SMOKE),
                          correctness, bench_one)
