"""InfLLM-V2 trainable sparse attention (arXiv 2509.24663): key compression, block selection,
block-sparse attention, and the dense/sparse switch. Layout q [B, T, Hq, D], k/v [B, T, Hkv, D];
`naive` holds float64 references with the same signatures; `infllmv2_attention_torch` is the
switch in PyTorch (SDPA, autograd backward; what CPU training runs), same signature."""
from .block_sparse import block_sparse_attention
from .compress import compress_keys, compressed_cu_seqlens
from .dense_sparse import infllmv2_attention
from .select import select_blocks
from .sparse_torch import infllmv2_attention_torch

__all__ = ["block_sparse_attention", "compress_keys", "compressed_cu_seqlens",
           "infllmv2_attention", "infllmv2_attention_torch", "select_blocks"]
