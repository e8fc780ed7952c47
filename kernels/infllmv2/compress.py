"""Key compression: parameter-free mean pooling of keys over full windows (Triton)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .checks import DTYPES
from .layout import num_windows


@triton.jit
def _compress_kernel(k, out, cu_k, cu_c, stride_kt, stride_kh, stride_ot, stride_oh, D,
                     KERNEL: tl.constexpr, STRIDE: tl.constexpr,
                     BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    i_c, i_h, i_n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    k_start = tl.load(cu_k + i_n)
    c_start = tl.load(cu_c + i_n)
    n_c = tl.load(cu_c + i_n + 1) - c_start
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)  # [BC] window index inside the sequence
    o_d = tl.arange(0, BLOCK_D)
    m_cd = (o_c < n_c)[:, None] & (o_d < D)[None, :]  # [BC, BD]
    p_k = (k + (k_start + o_c * STRIDE).to(tl.int64)[:, None] * stride_kt + i_h * stride_kh
           + o_d[None, :])
    b_acc = tl.zeros([BLOCK_C, BLOCK_D], dtype=tl.float32)
    for i in range(KERNEL):
        b_acc += tl.load(p_k + i * stride_kt, mask=m_cd, other=0.0).to(tl.float32)  # [BC, BD]
    p_o = out + (c_start + o_c).to(tl.int64)[:, None] * stride_ot + i_h * stride_oh + o_d[None, :]
    # div_rn: IEEE division (GPU fp32 `/` may be approximate), so the mean equals the reference
    tl.store(p_o, tl.math.div_rn(b_acc, KERNEL * 1.0).to(out.dtype.element_ty), mask=m_cd)


def compressed_cu_seqlens(cu_seqlens: torch.Tensor, kernel_size: int,
                          kernel_stride: int) -> torch.Tensor:
    """Offsets of each sequence's compressed keys in the packed output of compress_keys."""
    counts = [num_windows(n, kernel_size, kernel_stride) for n in cu_seqlens.diff().tolist()]
    return torch.tensor([0] + counts, dtype=torch.int64).cumsum(0).to(cu_seqlens)


def compress_keys(k: torch.Tensor, kernel_size: int, kernel_stride: int,
                  cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """Mean-pool keys over full windows: out[c] = mean(k[c·stride : c·stride + kernel_size]).

    Args:
        k: [B, T, H, D] keys; with `cu_seqlens` a packed batch [1, T_total, H, D].
        kernel_size, kernel_stride: window length and step (tokens).
        cu_seqlens: optional [N + 1] int offsets of the packed sequences; windows never cross a
            sequence boundary and each sequence is pooled from its own position 0.
    Returns:
        [B, Tc, H, D] in k's dtype with Tc = (T − kernel_size) // kernel_stride + 1 (0 when
        T < kernel_size); packed [1, Σ Tc_i, H, D] with cu_seqlens (offsets from
        `compressed_cu_seqlens`). Accumulates in float32.
    """
    if k.dim() != 4 or k.dtype not in DTYPES:
        raise ValueError(f"k must be a 4-D float tensor [B, T, H, D], got {k.dtype} "
                         f"{tuple(k.shape)}")
    if kernel_size < 1 or kernel_stride < 1:
        raise ValueError(f"kernel_size ({kernel_size}) and kernel_stride ({kernel_stride}) must "
                         "be positive")
    B, T, H, D = k.shape
    if cu_seqlens is None:
        cu_seqlens = torch.arange(B + 1, device=k.device) * T
    elif B != 1:
        raise ValueError(f"with cu_seqlens k must be packed (batch 1), got batch {B}")
    cu_c = compressed_cu_seqlens(cu_seqlens, kernel_size, kernel_stride)
    total_c = int(cu_c[-1])
    k_packed = k.reshape(-1, H, D).contiguous()
    out = torch.empty(total_c, H, D, dtype=k.dtype, device=k.device)
    max_c = int(cu_c.diff().max())
    if max_c > 0:
        BLOCK_C = 32
        grid = (triton.cdiv(max_c, BLOCK_C), H, cu_c.numel() - 1)
        _compress_kernel[grid](k_packed, out, cu_seqlens.to(torch.int32), cu_c.to(torch.int32),
                               k_packed.stride(0), k_packed.stride(1), out.stride(0),
                               out.stride(1), D, KERNEL=kernel_size, STRIDE=kernel_stride,
                               BLOCK_C=BLOCK_C, BLOCK_D=triton.next_power_of_2(D))
    return out.reshape(B, total_c // B, H, D)
