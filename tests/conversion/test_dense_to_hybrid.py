"""Dense → hybrid conversion: the per-layer mapping on small hand-made state dicts (exact QKV
blocks with K/V heads replicated), its errors, and the CLI end to end (a tiny dense checkpoint
from runner.py converted to "SLLS", dense-typed tensors bit-identical, then 2 training steps)."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_omni.config.schema import LinearAttentionConfig, ModelConfig
from megatron_omni.conversion.hybrid import dense_to_hybrid, replicate_kv_heads
from megatron_omni.conversion.qwen3 import ConversionError

CONVERT = Path(__file__).parents[2] / "launch" / "convert_dense_to_hybrid.py"

HEADS, GROUPS, LINEAR_GROUPS, HEAD_DIM, HIDDEN, FFN = 4, 2, 4, 3, 6, 5
DENSE = ModelConfig(num_layers=3, hidden_size=HIDDEN, ffn_hidden_size=FFN, num_attention_heads=HEADS,
                    num_query_groups=GROUPS, head_dim=HEAD_DIM, tie_embeddings=False)
HYBRID = dataclasses.replace(DENSE, layer_pattern="DSL",
                             linear=LinearAttentionConfig(num_query_groups=LINEAR_GROUPS))
ATTN = "self_attention."


def _layer(i: int, groups: int, gen: torch.Generator, gate: bool = False, out_norm: bool = False):
    qkv_rows = (HEADS + 2 * groups) * HEAD_DIM
    shapes = {"input_layernorm.weight": (HIDDEN,), ATTN + "linear_qkv.weight": (qkv_rows, HIDDEN),
              ATTN + "linear_proj.weight": (HIDDEN, HEADS * HEAD_DIM),
              ATTN + "q_layernorm.weight": (HEAD_DIM,), ATTN + "k_layernorm.weight": (HEAD_DIM,),
              "pre_mlp_layernorm.weight": (HIDDEN,), "mlp.linear_fc1.weight": (2 * FFN, HIDDEN),
              "mlp.linear_fc2.weight": (HIDDEN, FFN)}
    if gate:
        shapes[ATTN + "linear_gate.weight"] = (HEADS * HEAD_DIM, HIDDEN)
    if out_norm:
        shapes[ATTN + "out_norm.weight"] = (HEADS * HEAD_DIM,)
    return {f"decoder.layers.{i}.{k}": torch.randn(s, generator=gen) for k, s in shapes.items()}


def _outer(gen: torch.Generator):
    return {"embedding.word_embeddings.weight": torch.randn(7, HIDDEN, generator=gen),
            "decoder.final_layernorm.weight": torch.randn(HIDDEN, generator=gen),
            "output_layer.weight": torch.randn(7, HIDDEN, generator=gen)}


def _states():
    """(dense state, the fresh hybrid state) for DENSE and HYBRID ("DSL")."""
    gen = torch.Generator().manual_seed(0)
    dense = {**_outer(gen), **_layer(0, GROUPS, gen), **_layer(1, GROUPS, gen), **_layer(2, GROUPS, gen)}
    init = {**_outer(gen), **_layer(0, GROUPS, gen), **_layer(1, GROUPS, gen, gate=True),
            **_layer(2, LINEAR_GROUPS, gen, gate=True, out_norm=True)}
    return dense, init


def _dense_qkv_rows(qkv: torch.Tensor, kind: str, head: int) -> torch.Tensor:
    """Rows of query head `head` ("q") or K/V head `head` ("k", "v") in a dense fused QKV,
    counted out by hand: group g holds [q_{2g}, q_{2g+1}, k_g, v_g] (2 query heads a group)."""
    per = HEADS // GROUPS
    group, slot = (head // per, head % per) if kind == "q" else (head, per + (kind == "v"))
    start = (group * (per + 2) + slot) * HEAD_DIM
    return qkv[start:start + HEAD_DIM]


def test_dense_and_sparse_layers_copy_bit_identically():
    dense, init = _states()
    hybrid, report = dense_to_hybrid(dense, DENSE, HYBRID, init)
    assert hybrid.keys() == init.keys()
    fresh = {"decoder.layers.1.self_attention.linear_gate.weight",
             "decoder.layers.2.self_attention.linear_gate.weight",
             "decoder.layers.2.self_attention.out_norm.weight"}
    assert set(report["fresh"]) == fresh
    assert report["replicated"] == ["decoder.layers.2.self_attention.linear_qkv.weight"]
    assert set(report["copied"]) == set(dense) - set(report["replicated"])
    for key in report["copied"]:
        assert torch.equal(hybrid[key], dense[key]), key
    for key in fresh:
        assert hybrid[key] is init[key], key


def test_linear_qkv_holds_dense_heads_with_kv_replicated():
    dense, init = _states()
    hybrid, _ = dense_to_hybrid(dense, DENSE, HYBRID, init)
    src = dense["decoder.layers.2.self_attention.linear_qkv.weight"]
    got = hybrid["decoder.layers.2.self_attention.linear_qkv.weight"]
    # 4 K/V groups of 1 query head: group j = [q_j, k, v] with k, v from dense group j // 2.
    for j in range(LINEAR_GROUPS):
        block = got[j * 3 * HEAD_DIM:(j + 1) * 3 * HEAD_DIM]
        assert torch.equal(block[:HEAD_DIM], _dense_qkv_rows(src, "q", j)), f"q head {j}"
        assert torch.equal(block[HEAD_DIM:2 * HEAD_DIM], _dense_qkv_rows(src, "k", j // 2)), f"k {j}"
        assert torch.equal(block[2 * HEAD_DIM:], _dense_qkv_rows(src, "v", j // 2)), f"v {j}"


def test_replicate_kv_heads_same_groups_is_identity_and_handles_bias():
    qkv = torch.randn((HEADS + 2 * GROUPS) * HEAD_DIM, HIDDEN)
    assert torch.equal(replicate_kv_heads(qkv, HEADS, GROUPS, GROUPS, HEAD_DIM), qkv)
    bias = torch.arange((HEADS + 2 * GROUPS) * HEAD_DIM, dtype=torch.float32)
    weight_rows = replicate_kv_heads(qkv, HEADS, GROUPS, LINEAR_GROUPS, HEAD_DIM)
    bias_rows = replicate_kv_heads(bias, HEADS, GROUPS, LINEAR_GROUPS, HEAD_DIM).long()
    assert torch.equal(weight_rows, qkv[bias_rows])


@pytest.mark.parametrize("change, message", [
    (dict(linear=LinearAttentionConfig(num_query_groups=1)), "must be a multiple"),
    (dict(hidden_size=8), "model.hidden_size"),
    (dict(layer_pattern="DS"), "for each of the 3 layers"),
])
def test_bad_hybrid_configs_are_refused(change, message):
    dense, init = _states()
    with pytest.raises(ConversionError, match=message):
        dense_to_hybrid(dense, DENSE, dataclasses.replace(HYBRID, **change), init)


def test_non_dense_source_and_unmapped_tensors_are_refused():
    dense, init = _states()
    with pytest.raises(ConversionError, match="the source must be dense"):
        dense_to_hybrid(dense, dataclasses.replace(DENSE, layer_pattern="DSD"), HYBRID, init)
    extra = {**init, "decoder.layers.0.self_attention.linear_gate.weight": torch.zeros(1)}
    with pytest.raises(ConversionError, match="layers.0.self_attention.linear_gate.weight.*no source"):
        dense_to_hybrid(dense, DENSE, HYBRID, extra)
    with pytest.raises(ConversionError, match="no place in the hybrid model.*stray"):
        dense_to_hybrid({**dense, "stray": torch.zeros(1)}, DENSE, HYBRID, init)


def test_cli_converts_a_dense_checkpoint_that_then_trains(tmp_path):
    from omni_data_prep.demo_data import prepare_demo_data
    from tests.parallel.conftest import TINY, checkpoint_tensors, torchrun

    tokenizer, prefix = prepare_demo_data(tmp_path / "data", num_docs=300, vocab_size=400)
    # TINY's model; a lighter run (1 sample of 32 tokens per step, 2 steps, no evaluation)
    base = TINY + [f"data.tokenizer={tokenizer}", f"data.train_blend=[{prefix}]",
                   f"data.cache_dir={tmp_path / 'cache'}", "data.seq_length=32",
                   "training.micro_batch_size=1", "training.global_batch_size=1",
                   "training.train_steps=2", "training.eval_interval=0", "checkpoint.save_interval=0"]
    torchrun(1, base + [f"checkpoint.dir={tmp_path / 'dense'}"], tmp_path / "init.json", "--save-init")
    hybrid_sets = ["model.linear.num_query_groups=4", "model.linear.chunk_size=16"]
    proc = subprocess.run(
        [sys.executable, str(CONVERT), "--dense", str(tmp_path / "dense"), "--out",
         str(tmp_path / "hybrid"), "--pattern", "SLLS", *(a for s in hybrid_sets for a in ("--set", s))],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["pattern"] == "SLLS" and summary["num_replicated"] == 2
    assert sorted(summary["fresh"]) == sorted(
        [f"decoder.layers.{i}.self_attention.linear_gate.weight" for i in range(4)]
        + [f"decoder.layers.{i}.self_attention.out_norm.weight" for i in (1, 2)])

    dense = checkpoint_tensors(tmp_path / "dense" / "iter_0000000")
    hybrid = checkpoint_tensors(Path(summary["checkpoint"]))
    stacked = "decoder.layers."  # the dense checkpoint stacks layers: decoder.layers.<name> [L, ...]
    compared = 0
    for key, value in dense.items():
        if not key.startswith(stacked):
            assert torch.equal(hybrid[key], value), key
            compared += 1
            continue
        name = key[len(stacked):]
        for i, letter in enumerate("SLLS"):
            got = hybrid[f"{stacked}{i}.{name}"]
            if letter == "L" and name == "self_attention.linear_qkv.weight":
                assert torch.equal(got, replicate_kv_heads(value[i], 4, 2, 4, 16)), f"layer {i} qkv"
            else:
                assert torch.equal(got, value[i]), f"layer {i} {name}"
            compared += 1
    assert compared >= 4 * 8 + 2

    result = torchrun(1, base + ["model.layer_pattern=SLLS", *hybrid_sets,
                                 f"checkpoint.load={tmp_path / 'hybrid'}",
                                 f"checkpoint.dir={tmp_path / 'train'}"], tmp_path / "train.json")
    losses = [result["train"][s] for s in ("1", "2")]
    assert all(torch.isfinite(torch.tensor(losses))), losses
