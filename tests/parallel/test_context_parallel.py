"""Context parallelism without transformer-engine (megatron_omni.parallel.context_parallel).

(1) The load-balanced split and its all-gather round trip exactly, forward and backward.
(2) Lightning state passing (LASP-2 style) equals the kernel over the whole sequence, with
    gradients, also for a packed sequence (states restart at sample starts); the InfLLM-V2 core
    on a packed sequence equals the kernel over the whole pack (query blocks cut by CP chunk
    borders select with all their rows).
(3) Tiny decoders at CP=2, CP=4 and TP=2×CP=2 give one rank's loss and gradients: hybrid
    "SLLS"/"SL" models whose sparse layers run sparse (64 or 128 tokens ≥ dense_len 32, blocks
    of 16, 3 attended per query block) and an all-dense "DD" model; TP=2×CP=2 also with sequence
    parallelism on a packed batch (qkv_format sbhd) of several samples through "DSL" (all three
    types), one long enough to drop blocks and starting off the block grid. (Packed training
    runs at CP=2, CP=4, TP=2×CP=2 are in test_hybrid_parity.py.) Gloo ranks (tests/models/multirank.py): every rank builds the CP=1 model from one seed, rank 0 runs it as the reference, then all
    ranks rebuild at (tp, cp), copy the weights, run their part of the batch, and sum gradients
    over the CP group (what DDP does over the data×context-parallel group).
"""
import pytest
import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel
from megatron.core.packed_seq_params import PackedSeqParams

from megatron_omni.config import load_config
from megatron_omni.models.llm.model import build_llm
from megatron_omni.parallel.context_parallel import (gather_sequence, lightning_cp, local_chunks,
                                                     split_for_cp, unshuffle_chunks)
from tests.models.multirank import run_ranks
from tests.parallel.test_hybrid_parity import _shard, _unshard_grad

VOCAB = 100
SPARSE = [
    "model.sparse.dense_len=32", "model.sparse.block_size=16", "model.sparse.kernel_size=16",
    "model.sparse.kernel_stride=8", "model.sparse.init_blocks=1", "model.sparse.local_blocks=1",
    "model.sparse.topk=1", "model.linear.chunk_size=16",
]


# ---------------------------------------------------------------------------------------------
# (1) layout


def test_split_layout_and_unshuffle():
    x = torch.arange(2 * 16 * 3).reshape(2, 16, 3)  # [b, T, ·], cp = 4 -> chunks of 2
    parts = [split_for_cp(x, 1, cp_size=4, cp_rank=r) for r in range(4)]
    assert parts[0][0, :, 0].tolist() == [0, 3, 42, 45]  # chunks 0 and 7 (positions 0,1,14,15)
    assert parts[3][0, :, 0].tolist() == [18, 21, 24, 27]  # chunks 3 and 4
    stacked = torch.stack([p.movedim(1, 0) for p in parts])  # [cp, 2n, b, ·]
    assert torch.equal(unshuffle_chunks(stacked).movedim(0, 1), x)
    assert torch.equal(split_for_cp(x, 1, cp_size=1, cp_rank=0), x)
    with pytest.raises(ValueError, match="divisible by 2\\*cp"):
        split_for_cp(x, 1, cp_size=3, cp_rank=0)


def local_positions(local_len: int, group: dist.ProcessGroup) -> torch.Tensor:
    """Global positions [local_len] of this rank's tokens (local_len = 2n), from local_chunks."""
    n = local_len // 2
    a, b = local_chunks(group.size(), group.rank())
    return torch.cat([torch.arange(a * n, (a + 1) * n), torch.arange(b * n, (b + 1) * n)])


def _gather_round_trip() -> None:
    group, rank = dist.group.WORLD, dist.get_rank()
    size = dist.get_world_size()
    full = torch.randn(3, 8 * size, 2, generator=torch.Generator().manual_seed(0))
    local = split_for_cp(full, 1, group).clone().requires_grad_()
    assert torch.equal(local_positions(local.shape[1], group),
                       split_for_cp(torch.arange(full.shape[1]), 0, group))
    gathered = gather_sequence(local, 1, group)
    assert torch.equal(gathered, full)
    weight = torch.randn(full.shape, generator=torch.Generator().manual_seed(1))
    # every rank's loss uses the whole gathered sequence: d(sum over ranks)/d(local) = size·w
    (gathered * weight).sum().backward()
    assert torch.equal(local.grad, size * split_for_cp(weight, 1, group)), rank

    # Lightning state passing == the kernel over the whole sequence, forward and backward
    from omni_kernels.lightning import lightning_attn

    gen = torch.Generator().manual_seed(2)
    b, t, h, d = 2, 16 * 2 * size, 2, 8
    q, k, v = (torch.randn(b, t, h, d, generator=gen) for _ in range(3))
    slopes = torch.tensor([0.05, 0.3])
    do = torch.randn(b, t, h, d, generator=gen)
    ref = [x.clone().requires_grad_() for x in (q, k, v)]
    out_ref, _ = lightning_attn(*ref, slopes, chunk_size=16)
    (out_ref * do).sum().backward()
    mine = [split_for_cp(x, 1, group).clone().requires_grad_() for x in (q, k, v)]
    out = lightning_cp(lightning_attn, *mine, slopes, group, chunk_size=16)
    torch.testing.assert_close(out, split_for_cp(out_ref, 1, group), atol=1e-5, rtol=1e-5)
    (out * split_for_cp(do, 1, group)).sum().backward()
    for name, x, r in zip("qkv", mine, ref):
        torch.testing.assert_close(x.grad, split_for_cp(r.grad, 1, group), atol=1e-5, rtol=1e-5,
                                   msg=lambda m: f"d{name} rank {rank}: {m}")

    # packed: the state restarts at each sample start, also across chunks and ranks (samples
    # starting inside a chunk, exactly at a chunk border, and spanning several chunks)
    cu = torch.tensor([0, 5, 16 * 2, 16 * 2 + 7, t], dtype=torch.int32)
    q1, k1, v1, do1 = (x[:1] for x in (q, k, v, do))
    ref = [x.clone().requires_grad_() for x in (q1, k1, v1)]
    out_ref, _ = lightning_attn(*ref, slopes, chunk_size=16, cu_seqlens=cu)
    (out_ref * do1).sum().backward()
    mine = [split_for_cp(x, 1, group).clone().requires_grad_() for x in (q1, k1, v1)]
    out = lightning_cp(lightning_attn, *mine, slopes, group, cu, chunk_size=16)
    torch.testing.assert_close(out, split_for_cp(out_ref, 1, group), atol=1e-5, rtol=1e-5)
    (out * split_for_cp(do1, 1, group)).sum().backward()
    for name, x, r in zip("qkv", mine, ref):
        torch.testing.assert_close(x.grad, split_for_cp(r.grad, 1, group), atol=1e-5, rtol=1e-5,
                                   msg=lambda m: f"packed d{name} rank {rank}: {m}")


def _sparse_packed_core() -> None:
    """The InfLLM-V2 core on a packed batch under CP equals the kernel over the whole pack, with
    peaked random scores so that query rows disagree on their best block: a query block cut by
    a CP chunk border must still select with all its rows (the single-rank block partition)."""
    from types import SimpleNamespace

    from omni_kernels.infllmv2 import infllmv2_attention

    from megatron_omni.models.attention.sparse import InfLLMv2CoreAttention
    from megatron_omni.models.llm.model import transformer_config

    group = dist.group.WORLD
    cfg = load_config(None, ["model.backend=local", "training.precision=fp32", *SPARSE,
                             f"parallel.cp={group.size()}"])
    core = InfLLMv2CoreAttention(transformer_config(cfg), 1, None, settings=cfg.model.sparse,
                                 pg_collection=SimpleNamespace(cp=group))
    gen = torch.Generator().manual_seed(4)
    t, heads, d = 256, 8, 16
    q, k, v = (torch.randn(t, 1, heads, d, generator=gen) * 3 for _ in range(3))
    cu = [0, 8, 240, 256]  # a 232-token sample: query blocks straddle the borders 64, 128, 192
    ref = infllmv2_attention(*(x.transpose(0, 1) for x in (q, k, v)), **_kernel_settings(cfg),
                             cu_seqlens=torch.tensor(cu, dtype=torch.int32))
    ref = ref.transpose(0, 1).reshape(t, 1, heads * d)
    out = core(*(split_for_cp(x, 0, group) for x in (q, k, v)), None,
               packed_seq_params=packed_params(cu))
    torch.testing.assert_close(out, split_for_cp(ref, 0, group), atol=1e-5, rtol=1e-5)


def _kernel_settings(cfg) -> dict:
    st = cfg.model.sparse
    return dict(dense_len=st.dense_len, block_size=st.block_size, topk=st.topk,
                init_blocks=st.init_blocks, local_blocks=st.local_blocks,
                kernel_size=st.kernel_size, kernel_stride=st.kernel_stride)


# ---------------------------------------------------------------------------------------------
# (2) model parity


def packed_params(cu: list[int], qkv_format: str = "sbhd") -> PackedSeqParams:
    """A pack of samples at offsets `cu` (global positions; RoPE over the whole pack)."""
    cu_t = torch.tensor(cu, dtype=torch.int32)
    return PackedSeqParams(qkv_format=qkv_format, cu_seqlens_q=cu_t, cu_seqlens_kv=cu_t,
                           max_seqlen_q=cu[-1], max_seqlen_kv=cu[-1])


def _loss_and_grads(model, batch: int, seq: int, cp_group,
                    cu: list[int] | None) -> tuple[float, dict[str, torch.Tensor]]:
    """Mean per-token loss of a fixed batch [batch, seq] (a pack of samples at offsets `cu`
    when given); under CP this rank's part, scaled so that the sum over CP ranks is the mean."""
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, VOCAB, (batch, seq), generator=gen)
    labels = torch.randint(0, VOCAB, (batch, seq), generator=gen)
    positions = torch.arange(seq)[None].expand(batch, -1)
    tokens, labels, positions = (split_for_cp(t, 1, cp_group) for t in (tokens, labels, positions))
    packed = None if cu is None else packed_params(cu)
    loss = model(tokens, positions, None, labels=labels,
                 packed_seq_params=packed).sum() / (batch * seq)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def _compare(layout: str) -> None:
    """On each rank of a world of tp·cp ranks; parallel state at (tp, cp) on exit."""
    pattern, tp, cp, batch, seq, cu, *extra = LAYOUTS[layout]
    rank = dist.get_rank()
    overrides = ["model.backend=local", "training.precision=fp32",
                 f"model.num_layers={len(pattern)}", f"model.layer_pattern={pattern}", *SPARSE]

    def build(*extra: str):
        torch.manual_seed(1)
        tensor_parallel.model_parallel_cuda_manual_seed(1)
        return build_llm(load_config(None, overrides + list(extra)), VOCAB)

    ps.destroy_model_parallel()
    ps.initialize_model_parallel(1, 1)
    single = build()
    full = {n: p.detach().clone() for n, p in single.named_parameters()}
    if rank == 0:
        ref_loss, ref_grads = _loss_and_grads(single, batch, seq, None, cu)
    ps.destroy_model_parallel()

    ps.initialize_model_parallel(tp, 1, context_parallel_size=cp)
    model = build(f"parallel.tp={tp}", f"parallel.cp={cp}", *extra)
    tp_rank = ps.get_tensor_model_parallel_rank()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(_shard(name, full[name], p, tp_rank, tp))
    cp_group = ps.get_context_parallel_group()
    loss, grads = _loss_and_grads(model, batch, seq, cp_group, cu)
    dist.all_reduce(loss, group=cp_group)
    params = dict(model.named_parameters())
    sp = model.config.sequence_parallel
    grads = {n: _unshard_grad(n, params[n], g, sp) for n, g in grads.items()}
    for g in grads.values():
        dist.all_reduce(g, group=cp_group)
    _thd_packing_is_refused(model)
    if rank == 0:
        assert loss.item() == pytest.approx(ref_loss.item(), abs=1e-5), layout
        assert grads.keys() == ref_grads.keys()
        for name, grad in ref_grads.items():
            torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-4,
                                       msg=lambda m: f"{layout} {name}: {m}")


def _thd_packing_is_refused(model) -> None:
    """thd packing (megatron's per-sample CP layout) under CP raises a clear error in every
    attention type (before any collective, so no rank hangs)."""
    packed = packed_params([0, 8, 16], "thd")
    for layer in model.decoder.layers:
        core = layer.self_attention.core_attention
        heads = layer.self_attention.num_attention_heads_per_partition
        q = torch.zeros(16, 1, heads, model.config.kv_channels)
        with pytest.raises(NotImplementedError, match="packed sequences under context "
                                                      "parallelism .* need PackedSeqParams"):
            core(q, q, q, None, packed_seq_params=packed)


PACK_64 = [0, 5, 60, 64]
"""A 5-token sample, a 55-token one starting off the block grid (4 blocks, 3 attended; it
spans both CP=2 ranks and all four chunks) and a 4-token one."""

LAYOUTS = {
    # name: (pattern, tp, cp, batch, seq, packed offsets, *overrides); each CP chunk is one
    # 16-token sparse block
    "DD-cp2": ("DD", 1, 2, 2, 64, None),
    "SLLS-cp2": ("SLLS", 1, 2, 1, 64, None),
    "SL-cp4": ("SL", 1, 4, 1, 128, None),
    "SLLS-tp2-cp2": ("SLLS", 2, 2, 1, 64, None),
    "DSL-tp2-sp-cp2-packed": ("DSL", 2, 2, 1, 64, PACK_64, "parallel.sequence_parallel=true"),
}


def _suite(*layouts: str) -> None:
    """Several checks in one set of ranks (starting ranks costs more than a tiny check)."""
    if dist.get_world_size() == 2:
        _gather_round_trip()
        _sparse_packed_core()
    for layout in layouts:
        _compare(layout)


def test_two_ranks():
    """CP=2: gather round trip, Lightning state passing, the packed sparse core, all-dense and
    hybrid models."""
    run_ranks(_suite, 2, "DD-cp2", "SLLS-cp2")


def test_four_ranks():
    """CP=4 (hybrid, 128 tokens) and TP=2×CP=2 (plain; packed with SP)."""
    run_ranks(_suite, 4, "SL-cp4", "SLLS-tp2-cp2", "DSL-tp2-sp-cp2-packed")
