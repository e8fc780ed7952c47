"""InfLLM-V2 trainable sparse attention (arXiv 2509.24663): key compression, block selection,
block-sparse attention, and the dense/sparse switch. Layout q [B, T, Hq, D], k/v [B, T, Hkv, D];
`naive` holds float64 references with the same signatures."""
from .block_sparse import block_sparse_attention
from .compress import compress_keys, compressed_cu_seqlens
from .dense_sparse import infllmv2_attention
from .select import select_blocks

__all__ = ["block_sparse_attention", "compress_keys", "compressed_cu_seqlens",
           "infllmv2_attention", "select_blocks"]
