"""Context parallelism (CP) for our attention layers, without transformer-engine.

Sequence layout (load-balanced, the same as megatron-core's and transformer-engine's): a sequence
of T tokens is cut into 2·cp equal chunks of n = T / (2·cp) tokens; CP rank r holds chunk r and
chunk 2·cp − 1 − r, concatenated in that order (2n local tokens). With causal attention the
early chunk is cheap and the late one expensive, so every rank does the same work::

    cp = 2, T = 8 (n = 2):   global  [0 1 | 2 3 | 4 5 | 6 7]
                             rank 0: [0 1 6 7]     rank 1: [2 3 4 5]

Batches are split with ``split_for_cp`` (tokens, labels, loss_mask, position_ids; position ids
keep their global values). Megatron's RotaryEmbedding already slices the rotary table the same
way when cp > 1 (``get_pos_emb_on_this_cp_rank``), so RoPE sees global positions.

Attention under CP:
- dense (SDPA) and sparse (InfLLM-V2): ``gather_sequence`` all-gathers K/V over the CP group and
  restores the global order; each of the rank's two query chunks attends the keys [0, end of the
  chunk) with causality by global position (InfLLM-V2: ``position_offset`` = the chunk's start).
  The backward of the gather reduce-scatters the K/V gradients back to their owners.
- linear (Lightning): ``lightning_cp`` passes the recurrent state across chunks (LASP-2 style):
  each rank computes the zero-start state contribution of its two chunks, one all-gather shares
  them, every rank prefix-combines them with the decay powers λ^n, and each chunk is run through
  the kernel once with its incoming state. Gradients flow back through the combine and gather.

Costs per rank and layer: dense/sparse hold the gathered K/V of the whole sequence (O(T) memory,
one all-gather forward and one reduce-scatter backward of K and V); linear communicates only
2·cp states of [H, K, V] per sequence (independent of T) and runs the kernel once over its 2n
tokens (the two chunks as a batch of 2B sequences).

Packed sequences under CP (``PackedSeqParams`` with ``qkv_format="sbhd"``: the pack stays in
megatron's [s, 1, ...] layout, ``cu_seqlens_q`` holds the sample offsets in global positions, and
RoPE uses positions within the pack, which megatron's rotary table slices for the CP layout as
usual; attention depends only on relative positions inside a sample, so this equals per-sample
positions). The CP split ignores sample boundaries, so a sample can span chunks and ranks:
- dense: the gathered keys are masked to the query's own sample (sample ids from cu_seqlens);
- sparse: Q is gathered too, and each sample piece runs the kernel on its own keys with its
  query range widened to whole blocks of that sample (selection is per query block counted from
  the sample start), dense or sparse by the whole sample's length; exactly one rank's result.
  Costs: one more all-gather (of Q), at most one extra query block per piece, and one kernel
  call per sample piece (a Python loop: many short documents per chunk make many small calls);
- linear: the state chain restarts at every sample start (a chunk containing one passes on only
  the state of its last sample), and inside a chunk the kernel restarts at sample starts.
``qkv_format="thd"`` (megatron's per-sample CP layout for RoPE) is refused under CP.
Gradients of the replicated parameters are summed over the data×context-parallel group by
megatron's DDP / finalize_model_grads (they use ``with_context_parallel=True`` groups), and the
training step reports the loss summed over that group (megatron_omni.training.step).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def cp_group_or_default(group: dist.ProcessGroup | None = None) -> dist.ProcessGroup | None:
    """`group`, else megatron's CP group when model parallel state is initialised, else None."""
    if group is not None:
        return group
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized():
        return None
    return ps.get_context_parallel_group(check_initialized=False)


def attention_cp_group(config, pg_collection=None) -> dist.ProcessGroup | None:
    """The CP group a core attention module gathers over (from its pg_collection or megatron's
    parallel state), or None when context_parallel_size is 1."""
    if config.context_parallel_size == 1:
        return None
    return cp_group_or_default(None if pg_collection is None else getattr(pg_collection, "cp", None))


def _size_rank(group: dist.ProcessGroup | None) -> tuple[int, int]:
    if group is None:
        return 1, 0
    return group.size(), group.rank()


def local_chunks(cp_size: int, cp_rank: int) -> tuple[int, int]:
    """The two global chunk indices (of 2·cp_size) that CP rank `cp_rank` holds, in local order."""
    return cp_rank, 2 * cp_size - 1 - cp_rank


def split_for_cp(tensor: torch.Tensor, seq_dim: int, group: dist.ProcessGroup | None = None,
                 cp_size: int | None = None, cp_rank: int | None = None) -> torch.Tensor:
    """This CP rank's part of `tensor` along `seq_dim` (chunks r and 2cp−1−r, concatenated).
    The sequence length must be divisible by 2·cp. Identity when cp == 1. `cp_size`/`cp_rank`
    override the group (for tests and data code without a process group)."""
    size, rank = _size_rank(cp_group_or_default(group))
    size = size if cp_size is None else cp_size
    rank = rank if cp_rank is None else cp_rank
    if size == 1:
        return tensor
    seq = tensor.shape[seq_dim]
    if seq % (2 * size):
        raise ValueError(f"sequence length {seq} (dim {seq_dim}) must be divisible by 2*cp = "
                         f"{2 * size} for the load-balanced context-parallel layout")
    chunks = tensor.chunk(2 * size, dim=seq_dim)
    a, b = local_chunks(size, rank)
    return torch.cat([chunks[a], chunks[b]], dim=seq_dim)


def _reduce_scatter_first_dim(grad: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Sum `grad` [size·m, ...] over the group; return this rank's slice [m, ...]."""
    size, rank = group.size(), group.rank()
    grad = grad.contiguous()
    out = grad.new_empty((grad.shape[0] // size, *grad.shape[1:]))
    try:
        dist.reduce_scatter_tensor(out, grad, group=group)
    except (RuntimeError, NotImplementedError):  # backends without reduce_scatter
        dist.all_reduce(grad, group=group)
        out = grad.chunk(size)[rank].clone()
    return out


class _AllGatherStack(torch.autograd.Function):
    """[...] on each rank -> [size, ...] (rank-major); backward: sum the gradient over ranks and
    keep this rank's slot (a reduce-scatter)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        flat = x.contiguous().reshape(-1)
        out = torch.empty(group.size() * flat.numel(), dtype=x.dtype, device=x.device)
        dist.all_gather_into_tensor(out, flat, group=group)
        return out.reshape(group.size(), *x.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        flat = grad.reshape(-1)
        return _reduce_scatter_first_dim(flat, ctx.group).reshape(grad.shape[1:]), None


def all_gather_stack(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Autograd-aware all-gather: [size, *x.shape], slot i from CP rank i."""
    if group.size() == 1:
        return x[None]
    return _AllGatherStack.apply(x, group)


def unshuffle_chunks(stacked: torch.Tensor) -> torch.Tensor:
    """Rank-major per-rank tensors [cp, 2n, ...] (load-balanced layout) -> [2cp·n, ...] in
    global order (chunk c < cp comes from rank c's first half, c >= cp from rank 2cp−1−c's
    second half)."""
    cp, two_n = stacked.shape[:2]
    halves = stacked.reshape(cp, 2, two_n // 2, *stacked.shape[2:])
    return torch.cat([halves[:, 0], halves[:, 1].flip(0)], dim=0).reshape(cp * two_n,
                                                                          *stacked.shape[2:])


def gather_sequence(x: torch.Tensor, seq_dim: int, group: dist.ProcessGroup) -> torch.Tensor:
    """All-gather this rank's load-balanced part of a sequence (length 2n along `seq_dim`) over
    the CP group, returned in global order (length 2·cp·n). Backward: the gradient of the full
    sequence is reduce-scattered back to the owners of each chunk."""
    if group.size() == 1:
        return x
    moved = x.movedim(seq_dim, 0)
    full = unshuffle_chunks(all_gather_stack(moved, group))
    return full.movedim(0, seq_dim)


def cp_packed_cu_seqlens(packed_seq_params, batch: int, what: str) -> torch.Tensor | None:
    """Global sample offsets [N + 1] of a packed batch (batch size 1) under CP; None when not
    packed. Only ``qkv_format="sbhd"`` packing has our load-balanced layout (megatron's thd RoPE
    splits each sample over the CP ranks instead)."""
    if packed_seq_params is None:
        return None
    if batch != 1:
        raise ValueError(f"{what}: a packed batch (packed_seq_params) must have batch size 1, "
                         f"got {batch}")
    if packed_seq_params.qkv_format != "sbhd":
        raise NotImplementedError(
            f"{what}: packed sequences under context parallelism (parallel.cp > 1) need "
            f"PackedSeqParams(qkv_format='sbhd') (positions within the pack), got "
            f"qkv_format={packed_seq_params.qkv_format!r}")
    return packed_seq_params.cu_seqlens_q


def sample_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Index of the packed sample each of the positions [0, total) belongs to."""
    positions = torch.arange(total, device=cu_seqlens.device)
    return torch.bucketize(positions, cu_seqlens[1:].to(positions.device), right=True)


# ---------------------------------------------------------------------------------------------
# Lightning (linear attention) state passing


def chunk_states(k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor,
                 start: int = 0) -> torch.Tensor:
    """The state a recurrence starting from zero at token `start` reaches after k, v
    [B, n, H, K/V]: M = Σ_{t>=start} λ^(n−1−t) k_tᵀ v_t, λ = exp(−s_h); float32 [B, H, K, V]."""
    n = k.shape[1]
    steps = torch.arange(n - 1, -1, -1, device=k.device, dtype=torch.float32)
    w = torch.exp(-slopes.float()[None, :] * steps[:, None])  # [n, H]
    w = w * (torch.arange(n, device=k.device) >= start)[:, None]
    return torch.einsum("bthk,th,bthv->bhkv", k.float(), w, v.float())


def prefix_states(states: torch.Tensor, slopes: torch.Tensor, n: int,
                  restarts: list[bool] | None = None) -> torch.Tensor:
    """Incoming states of consecutive chunks of n tokens: states [C, B, H, K, V] (each chunk's
    zero-start final state, in global order) -> [C, B, H, K, V] with S_0 = 0 and
    S_c = λ^n S_{c−1} + M_{c−1}, or S_c = M_{c−1} when a sample starts inside chunk c−1
    (``restarts[c−1]``; its M then starts there)."""
    decay = torch.exp(-slopes.float() * n)[None, :, None, None]  # [1, H, 1, 1]
    out, s = [torch.zeros_like(states[0])], torch.zeros_like(states[0])
    for c in range(states.shape[0] - 1):
        s = (0 if restarts is not None and restarts[c] else decay) * s + states[c]
        out.append(s)
    return torch.stack(out)


def lightning_cp(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor,
                 group: dist.ProcessGroup, cu_seqlens: torch.Tensor | None = None,
                 **kwargs) -> torch.Tensor:
    """Lightning attention of this rank's load-balanced tokens q, k, v [B, 2n, H, D] (bshd) with
    the recurrence carried across all CP ranks (LASP-2 style, one all-gather of 2 states per
    rank). `attn` is the kernel (``lightning_attn`` signature); `cu_seqlens` [N + 1] are global
    sample offsets of a packed batch (B = 1): the recurrence restarts at each sample start.
    Returns o [B, 2n, H, V]."""
    size, rank = group.size(), group.rank()
    b, two_n = q.shape[:2]
    n = two_n // 2
    mine = local_chunks(size, rank)
    starts = set() if cu_seqlens is None else set(cu_seqlens[1:-1].tolist())
    # per global chunk: where its last sample start lies (chunk-relative), None without one
    last_start = [max((p - c * n for p in starts if c * n <= p < (c + 1) * n), default=None)
                  for c in range(2 * size)]
    qs, ks, vs = (t.reshape(b, 2, n, *t.shape[2:]) for t in (q, k, v))
    local = torch.stack([chunk_states(ks[:, i], vs[:, i], slopes, last_start[c] or 0)
                         for i, c in enumerate(mine)])  # [2, B, H, K, V]
    gathered = all_gather_stack(local, group)  # [cp, 2, B, H, K, V]
    ordered = torch.cat([gathered[:, 0], gathered[:, 1].flip(0)])  # [2cp, B, H, K, V] global
    incoming = prefix_states(ordered, slopes, n, [p is not None for p in last_start])
    if cu_seqlens is None:
        h0 = torch.stack([incoming[c] for c in mine], dim=1).flatten(0, 1)  # [B·2, H, K, V]
        # the two chunks as a batch of 2B sequences of n tokens, each with its incoming state
        fold = lambda t: t.flatten(0, 1)  # noqa: E731  [B, 2, n, ...] -> [B·2, n, ...]
        out, _ = attn(fold(qs), fold(ks), fold(vs), slopes, initial_state=h0, **kwargs)
        return out.reshape(b, two_n, *out.shape[2:])
    # packed (B = 1): the two chunks as one packed row, cut at the chunk border and at every
    # sample start; a piece starting a chunk continues the incoming state unless a sample
    # starts there too
    offsets, h0 = [], []
    zero = torch.zeros_like(incoming[0, 0])
    for i, c in enumerate(mine):
        cuts = sorted({0} | {p - c * n for p in starts if c * n <= p < (c + 1) * n})
        offsets += [i * n + x for x in cuts]
        h0 += [zero if c * n in starts else incoming[c, 0]] + [zero] * (len(cuts) - 1)
    cu_local = torch.tensor(offsets + [two_n], dtype=torch.int32, device=q.device)
    out, _ = attn(q, k, v, slopes, initial_state=torch.stack(h0), cu_seqlens=cu_local, **kwargs)
    return out
