"""Hybrid models at TP/CP/PP give one rank's losses and gradients on packed batches.

(1) TP=2 (and TP=2 with sequence parallelism) for a tiny hybrid model ("SLLS": InfLLM-V2 and
Lightning layers) on a thd-packed batch whose first sample is long enough for the sparse layers
to drop blocks. Two gloo ranks (tests/models/multirank.py): both build the TP=1 model from one
seed, rank 0 runs it, then both reshard it to TP=2.
(2) Training runs with data.packed (documents of the demo corpus packed per sample, sbhd) at
TP=2, CP=2, CP=4, PP=2 and TP=2×CP=2 against one rank (torchrun, cached per module)."""
import pytest
import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel
from megatron.core.packed_seq_params import PackedSeqParams

from megatron_omni.config import load_config
from megatron_omni.data.text import build_text_datasets
from megatron_omni.data.tokenizer import load_tokenizer
from megatron_omni.models.llm.model import build_llm
from tests.models.multirank import run_ranks
from tests.parallel.conftest import TINY, Runs
from tests.parallel.test_parity import _first_moments

PATTERN = "SLLS"
OVERRIDES = [
    "model.backend=local", "training.precision=fp32", f"model.num_layers={len(PATTERN)}",
    f"model.layer_pattern={PATTERN}", "model.sparse.dense_len=32", "model.sparse.block_size=16",
    "model.sparse.kernel_size=16", "model.sparse.kernel_stride=8", "model.sparse.init_blocks=1",
    "model.sparse.local_blocks=1", "model.sparse.topk=1", "model.linear.chunk_size=16",
]
CU_SEQLENS = [0, 50, 64]
"""A 50-token sample (4 blocks of 16, 3 attended) and a 14-token one, packed."""
VOCAB = 100


def _loss_and_grads(model) -> tuple[float, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, VOCAB, (1, CU_SEQLENS[-1]), generator=gen)
    labels = torch.randint(0, VOCAB, (1, CU_SEQLENS[-1]), generator=gen)
    positions = torch.cat([torch.arange(b - a) for a, b in zip(CU_SEQLENS, CU_SEQLENS[1:])])[None]
    cu = torch.tensor(CU_SEQLENS, dtype=torch.int32)
    longest = max(b - a for a, b in zip(CU_SEQLENS, CU_SEQLENS[1:]))
    packed = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                             max_seqlen_q=longest, max_seqlen_kv=longest)
    loss = model(tokens, positions, None, labels=labels, packed_seq_params=packed).mean()
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters()}


def _is_swiglu_fc1(name: str) -> bool:
    """SwiGLU fc1 holds [gate; up]; TP rank r holds [gate_r; up_r], not a plain row chunk."""
    return "linear_fc1" in name


def _shard(name: str, full: torch.Tensor, param: torch.nn.Parameter, rank: int, tp: int):
    if _is_swiglu_fc1(name):
        gate, up = full.chunk(2)
        return torch.cat([gate.chunk(tp)[rank], up.chunk(tp)[rank]])
    if getattr(param, "tensor_model_parallel", False):
        return full.chunk(tp, dim=param.partition_dim)[rank]
    return full


def _unshard_grad(name: str, param: torch.nn.Parameter, grad: torch.Tensor, sequence_parallel: bool):
    """The TP=1-shaped gradient: TP-split tensors gathered; duplicated ones summed over TP where
    megatron's finalize_model_grads sums them (QK norms; sequence-parallel norms)."""
    group, tp = ps.get_tensor_model_parallel_group(), ps.get_tensor_model_parallel_world_size()
    if _is_swiglu_fc1(name) or getattr(param, "tensor_model_parallel", False):
        parts = [torch.empty_like(grad) for _ in range(tp)]
        dist.all_gather(parts, grad.contiguous(), group=group)
        if _is_swiglu_fc1(name):
            gates, ups = zip(*(p.chunk(2) for p in parts))
            return torch.cat(gates + ups)
        return torch.cat(parts, dim=param.partition_dim)
    if "q_layernorm" in name or "k_layernorm" in name or (
            sequence_parallel and getattr(param, "sequence_parallel", False)):
        grad = grad.clone()
        dist.all_reduce(grad, group=group)
    return grad


LAYOUTS = {"tp2": ["parallel.tp=2"],
           "tp2_sp": ["parallel.tp=2", "parallel.sequence_parallel=true"]}


def _compare(layout: str) -> None:
    """On each of 2 ranks (parallel state at TP=2 on entry and exit)."""
    rank = dist.get_rank()

    def build(*overrides: str):
        torch.manual_seed(1)
        tensor_parallel.model_parallel_cuda_manual_seed(1)
        return build_llm(load_config(None, OVERRIDES + list(overrides)), VOCAB)

    ps.destroy_model_parallel()
    ps.initialize_model_parallel(1, 1)
    single = build()
    full = {n: p.detach().clone() for n, p in single.named_parameters()}
    if rank == 0:
        ref_loss, ref_grads = _loss_and_grads(single)
    ps.destroy_model_parallel()

    ps.initialize_model_parallel(2, 1)
    model = build(*LAYOUTS[layout])
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(_shard(name, full[name], p, rank, 2))
    loss, grads = _loss_and_grads(model)
    params = dict(model.named_parameters())
    sp = model.config.sequence_parallel
    grads = {n: _unshard_grad(n, params[n], g, sp) for n, g in grads.items()}
    if rank == 0:
        assert loss == pytest.approx(ref_loss, abs=1e-5)
        assert grads.keys() == ref_grads.keys()
        assert any("out_norm" in n for n in grads) and any("linear_gate" in n for n in grads)
        for name, grad in ref_grads.items():
            torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-4,
                                       msg=lambda m: f"{layout} {name}: {m}")


@pytest.mark.parametrize("layout", ["tp2", "tp2_sp"])
def test_matches_single_rank(layout):
    run_ranks(_compare, 2, layout)


# ---------------------------------------------------------------------------------------------
# Training runs on packed batches (data.packed): TP=2, CP=2, CP=4, PP=2 and TP=2×CP=2 train a
# tiny "SDLS" model (all three layer types) like one rank: the step-1 loss within 1e-5 and
# gradients (Adam's first moment) within tolerance. One step on one 128-token sample of the demo
# corpus (the S/L layers run the PyTorch ops: model.kernels=auto on CPU): documents of 14, 38 and
# 76 tokens; the 76-token one drops blocks in the sparse layers, starts off the block grid and
# spans CP chunks and ranks.

PACKED_RUN = [*OVERRIDES[:2], "model.layer_pattern=SDLS", *OVERRIDES[4:], "data.packed=true",
              "data.seq_length=128", "training.micro_batch_size=1", "training.global_batch_size=1",
              "training.train_steps=1", "training.warmup_steps=0", "training.eval_interval=0",
              "checkpoint.save_interval=1"]
PACKED_LAYOUTS = {
    "tp2": (2, ["parallel.tp=2"]),
    "cp2": (2, ["parallel.cp=2"]),
    "cp4": (4, ["parallel.cp=4"]),
    "pp2": (2, ["parallel.pp=2"]),
    "tp2_cp2": (4, ["parallel.tp=2", "parallel.cp=2"]),
}


@pytest.fixture(scope="module")
def packed_runs(tmp_path_factory, text_data):
    return Runs(tmp_path_factory.mktemp("packed_runs"), TINY + text_data + PACKED_RUN)


def test_packed_samples_follow_the_documents(text_data, tmp_path):
    """Each sample's cu_seqlens start a document after every <eod>; the sample the packed runs
    train on holds several documents, one long enough for the sparse layers to drop blocks."""
    cfg = load_config(None, TINY + text_data + PACKED_RUN + [f"checkpoint.dir={tmp_path}"])
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    train, _ = build_text_datasets(cfg, tokenizer, 4, 0)
    for i in range(4):
        sample = train[i]
        cu = sample["cu_seqlens"]
        eods = (sample["tokens"] == tokenizer.eod_id).nonzero().flatten()
        assert cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == 128
        assert cu[1:-1].tolist() == [e + 1 for e in eods.tolist() if e + 1 < 128]
    lengths = train[0]["cu_seqlens"].diff().tolist()
    assert len(lengths) >= 3 and max(lengths) > 48  # > 3 blocks of 16: blocks are dropped


@pytest.mark.parametrize("layout", list(PACKED_LAYOUTS))
def test_packed_training_matches_single_rank(packed_runs, layout):
    ref, ref_dir = packed_runs.get("single", 1, [])
    nproc, overrides = PACKED_LAYOUTS[layout]
    got, got_dir = packed_runs.get(layout, nproc, overrides)
    assert sorted(got["train"]) == ["1"]
    for step, loss in ref["train"].items():
        assert got["train"][step] == pytest.approx(loss, abs=1e-5), f"step {step}"
    ref_m, got_m = _first_moments(ref_dir), _first_moments(got_dir)
    assert ref_m.keys() == got_m.keys() and any("linear_gate" in k for k in ref_m)
    for key in ref_m:
        torch.testing.assert_close(got_m[key], ref_m[key], atol=1e-7, rtol=1e-4, msg=key)
