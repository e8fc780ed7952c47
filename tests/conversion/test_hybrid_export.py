"""Hybrid LLM export (conversion/hybrid_export.py): tiny DSLD (gated, minimax slopes, GQA in the
Lightning layers) and SSSS (no gate) checkpoints on one process, exported to omni_hybrid folders
that a process without this project loads with trust_remote_code; logits within 1e-4 of
megatron above sparse.dense_len with blocks dropped, generate() against megatron step by step,
the modeling file's sparse selection and Lightning recurrence against the kernels' naive
references, the round trip through from-hf bit for bit, and every refusal leaving nothing on disk.
"""
import contextlib
import dataclasses
import inspect
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_omni.config import config_to_dict, load_config
from megatron_omni.config.schema import LinearAttentionConfig, OmniModelConfig, SparseAttentionConfig
from megatron_omni.conversion import hybrid_modeling
from megatron_omni.conversion.checkpoints import plain_state, single_rank_config
from megatron_omni.conversion.common import ConversionError
from megatron_omni.conversion.hybrid_export import check_exportable, hybrid_folder_to_megatron
from megatron_omni.models.llm.model import build_llm
from megatron_omni.training import checkpoint
from tests.parallel.conftest import checkpoint_tensors

pytestmark = pytest.mark.usefixtures("megatron_single_rank")

VOCAB = 331
"""The tokenizer's size (odd: the embedding pads it to 384)."""
TEXT = "the quick brown fox"
SPARSE = dict(dense_len=128, block_size=16, topk=2, init_blocks=1, local_blocks=2, kernel_size=16,
              kernel_stride=8)
LENGTH = 160
"""> dense_len: 10 key blocks of 16, each query block attends at most 1 + 2 + 2 of them (block
scores need the 128-token normaliser windows: from token 127 on)."""
PROMPT, NEW_TOKENS = 127, 2
HEADS = dict(num_attention_heads=2, num_query_groups=1)
"""GQA with the fewest heads: the Triton interpreter's time grows with the heads."""
CASES = {"DSLD": dict(gate=True, linear=LinearAttentionConfig(num_query_groups=1, slopes="minimax",
                                                              chunk_size=16), rope_scaling_factor=2.0),
         "SSSS": dict(gate=False, linear=LinearAttentionConfig())}

# Run in a fresh interpreter, outside the repository, with this project made unimportable (it is
# installed editable, so a clean PYTHONPATH alone would not hide it).
LOADER = r"""
import importlib.abc, json, sys
BLOCKED = ("megatron_omni", "omni_kernels", "omni_launch", "omni_data_prep")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
try:
    import megatron_omni
    raise SystemExit("the project is importable")
except ModuleNotFoundError:
    pass
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tokens = torch.load(sys.argv[1])
out = {}
for name, folder in json.loads(sys.argv[2]).items():
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    out["text_ids"] = AutoTokenizer.from_pretrained(folder)(%(text)r)["input_ids"]
    with torch.no_grad():
        out[name] = {"logits": model(tokens).logits, "class": type(model).__name__}
        if name == "DSLD":
            prompt = tokens[:, :%(prompt)d]  # random ids may hit pad_token_id: pass the mask
            gen = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                 max_new_tokens=%(new)d, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)
            out[name]["generated"] = gen.sequences
            out[name]["step_logits"] = torch.stack(gen.logits, 1)
torch.save(out, sys.argv[3])
""" % {"prompt": PROMPT, "new": NEW_TOKENS, "text": TEXT}


def hybrid_cfg(pattern: str, gate: bool, linear: LinearAttentionConfig, rope_scaling_factor: float = 1.0,
               tokenizer: Path | None = None, **sparse):
    cfg = load_config(None, ["model.backend=local", "training.precision=fp32"])
    cfg.data = dataclasses.replace(cfg.data, tokenizer=None if tokenizer is None else str(tokenizer))
    cfg.model = dataclasses.replace(
        cfg.model, **HEADS, layer_pattern=pattern, rope_theta=10000.0, vocab_size=VOCAB, linear=linear,
        rope_scaling_factor=rope_scaling_factor,  # linear position interpolation
        sparse=SparseAttentionConfig(**{**SPARSE, **sparse}, output_gate=gate))
    return single_rank_config(cfg, "float32")


def build(cfg, state=None):
    from megatron.core import tensor_parallel

    torch.manual_seed(0)
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    model = build_llm(cfg, VOCAB).eval()
    with torch.no_grad():
        if state is not None:
            model.load_state_dict(state, strict=False)
            return model
        for name, p in model.named_parameters():  # norms away from one, O(1) logits
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
    return model


def megatron_logits(model, tokens):
    with torch.no_grad():
        return model(tokens, torch.arange(tokens.shape[1]).expand_as(tokens), None)


def to_hf(checkpoint_dir: Path, out: Path) -> dict:
    """``convert_checkpoint.py to-hf --verify`` in this process; its JSON summary."""
    from omni_launch.convert_checkpoint import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["to-hf", "--checkpoint", str(checkpoint_dir), "--out", str(out), "--verify",
                     "--tolerance", "1e-4"]) == 0
    return json.loads(printed.getvalue().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Per case: the checkpoint, the folder, megatron's logits (sparse, and with dense_len above
    LENGTH), and what the project-free process computed from the folder."""
    from omni_data_prep.make_demo_corpus import make_demo_corpus
    from omni_data_prep.train_tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("hybrid")
    corpus = make_demo_corpus(root / "corpus.jsonl", num_docs=100, seed=0)
    tokenizer = train_tokenizer([str(corpus)], str(root / "tok"), vocab_size=VOCAB, threads=1)
    tokens = torch.randint(0, VOCAB, (1, LENGTH), generator=torch.Generator().manual_seed(1))
    cases = {}
    for pattern, case in CASES.items():
        cfg = hybrid_cfg(pattern, **case, tokenizer=tokenizer)
        model = build(cfg)
        ckpt = checkpoint.save_checkpoint(root / f"run-{pattern}", 0, [model], 0, config_to_dict(cfg), VOCAB)
        summary = to_hf(root / f"run-{pattern}", root / f"hf-{pattern}")
        dense = build(hybrid_cfg(pattern, **case, dense_len=LENGTH + 1),
                      plain_state(model))
        cases[pattern] = dict(cfg=cfg, model=model, ckpt=ckpt, folder=root / f"hf-{pattern}",
                              tokenizer=tokenizer, summary=summary, sparse=megatron_logits(model, tokens),
                              dense=megatron_logits(dense, tokens))
    torch.save(tokens, root / "tokens.pt")
    folders = json.dumps({p: str(c["folder"]) for p, c in cases.items()})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(root / "hf_modules"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", LOADER, str(root / "tokens.pt"), folders,
                           str(root / "out.pt")], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    hf = torch.load(root / "out.pt")
    return tokens, cases, hf


@pytest.mark.parametrize("pattern", list(CASES))
def test_exported_logits_match_megatron_with_blocks_dropped(exported, pattern):
    tokens, cases, hf = exported
    case = cases[pattern]
    assert hf[pattern]["class"] == "OmniHybridForCausalLM"
    assert case["summary"]["model_type"] == "omni_hybrid" and case["summary"]["max_abs_logit_diff"] < 1e-4
    assert LENGTH // SPARSE["block_size"] > SPARSE["init_blocks"] + SPARSE["local_blocks"] + SPARSE["topk"]
    # the sparse layers really select: megatron's dense attention over the same weights differs
    assert (case["sparse"] - case["dense"]).abs().max() > 1e-2
    diff = (hf[pattern]["logits"] - case["sparse"][..., :hf[pattern]["logits"].shape[-1]]).abs().max()
    assert diff < 1e-4, f"{pattern}: max |logit diff| {diff:.2e}"


def test_generate_matches_megatron_step_by_step(exported):
    tokens, cases, hf = exported
    model = cases["DSLD"]["model"]
    generated, step_logits = hf["DSLD"]["generated"], hf["DSLD"]["step_logits"]
    assert torch.equal(generated[:, :PROMPT], tokens[:, :PROMPT])
    assert generated.shape[1] == PROMPT + NEW_TOKENS
    for step in range(NEW_TOKENS):  # dense below dense_len=128 tokens, then sparse
        ours = megatron_logits(model, generated[:, :PROMPT + step])[:, -1, :VOCAB]  # no padding
        torch.testing.assert_close(step_logits[:, step], ours, atol=1e-4, rtol=0)
        assert generated[0, PROMPT + step] == ours.argmax(-1)[0]


def test_folder_contents(exported):
    from omni_kernels.infllmv2 import infllmv2_attention

    from megatron_omni.data.tokenizer import load_tokenizer

    _, cases, hf = exported
    folder = cases["SSSS"]["folder"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "modeling_omni_hybrid.py",
        "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "omni_hybrid" and config["layer_pattern"] == "SSSS"
    assert config["sparse"]["output_gate"] is False and config["vocab_size"] == VOCAB
    tok = load_tokenizer(cases["SSSS"]["tokenizer"])
    assert hf["text_ids"] == tok.encode(TEXT)
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation == {"use_cache": False, "eos_token_id": tok.eod_id, "pad_token_id": tok.pad_id}
    assert (config["eos_token_id"], config["pad_token_id"]) == (tok.eod_id, tok.pad_id)
    assert (folder / "modeling_omni_hybrid.py").read_bytes() == Path(hybrid_modeling.__file__).read_bytes()
    kernel = inspect.signature(infllmv2_attention)
    for name in ("lse_kernel_size", "lse_kernel_stride"):  # what the sparse layers run with
        assert config["sparse"][name] == kernel.parameters[name].default


@pytest.mark.parametrize("pattern", list(CASES))
def test_from_hf_reads_the_folder_back_bit_identically(exported, tmp_path, capsys, pattern):
    from omni_launch.convert_checkpoint import main

    case = exported[1][pattern]
    assert main(["from-hf", "--hf", str(case["folder"]), "--out", str(tmp_path / "back")]) == 0
    back = Path(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["checkpoint"])
    original, restored = checkpoint_tensors(case["ckpt"]), checkpoint_tensors(back)
    assert original.keys() == restored.keys()
    for key, value in original.items():
        if key in ("embedding.word_embeddings.weight", "output_layer.weight"):
            # the true vocabulary's rows; megatron's padding rows (masked) come back as zeros
            assert torch.equal(restored[key][:VOCAB], value[:VOCAB]) and not restored[key][VOCAB:].any(), key
            value = value[:VOCAB]
            restored[key] = restored[key][:VOCAB]
        assert restored[key].dtype == value.dtype and torch.equal(restored[key], value), key
    saved, loaded = checkpoint.read_common(case["ckpt"]), checkpoint.read_common(back)
    assert loaded["config"]["model"] == saved["config"]["model"]
    assert loaded["vocab_size"] == saved["vocab_size"] == VOCAB


def test_sparse_selection_and_attention_match_the_naive_reference(monkeypatch):
    from omni_kernels.infllmv2 import naive

    gen = torch.Generator().manual_seed(2)
    t, hq, hkv, d = 150, 4, 2, 8
    q, k, v = (torch.randn(1, t, h, d, generator=gen) for h in (hq, hkv, hkv))
    k[:, 40:56] *= 4  # a block with peaked scores
    st = {**hybrid_modeling.SPARSE_DEFAULTS, **SPARSE, "lse_kernel_size": 32, "lse_kernel_stride": 16}
    pool = {n: st[n] for n in ("block_size", "topk", "init_blocks", "local_blocks", "kernel_size",
                               "kernel_stride", "lse_kernel_size", "lse_kernel_stride")}
    idx = naive.select_blocks(q, k, **pool)[0]  # [NQB, Hkv, K]
    want = torch.zeros(idx.shape[0], hkv, idx.shape[0], dtype=torch.bool)
    for r, h, j in (idx >= 0).nonzero().tolist():
        want[r, h, idx[r, h, j]] = True
    got = hybrid_modeling.select_blocks(q.transpose(1, 2), k.transpose(1, 2), st)[0].transpose(0, 1)
    assert torch.equal(got, want)
    assert (~got).any(), "some blocks are dropped"
    ref = naive.infllmv2_attention(q, k, v, dense_len=st["dense_len"], **pool)
    monkeypatch.setattr(hybrid_modeling, "QUERY_CHUNK_BLOCKS", 3)  # 10 query blocks: 4 chunks
    out = hybrid_modeling.infllmv2_attention(*(x.transpose(1, 2) for x in (q, k, v)), st).transpose(1, 2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_lightning_chunks_match_the_naive_recurrence():
    from omni_kernels.lightning import lightning_attn_naive, minimax_slopes

    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 45, 3, 8, generator=gen) for _ in range(3))  # 45: a partial chunk
    slopes = minimax_slopes(3, 1, 3)
    ref, _ = lightning_attn_naive(q, k, v, slopes)
    out = hybrid_modeling.lightning_attention(*(x.transpose(1, 2) for x in (q, k, v)), slopes, 16)
    torch.testing.assert_close(out.transpose(1, 2), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(hybrid_modeling.decay_slopes({"slopes": "minimax"}, 3, 1, 3), slopes)


@pytest.mark.parametrize("change, field", [
    (dict(omni=OmniModelConfig()), "model.omni"),
    (dict(layer_pattern="DSXD"), "model.layer_pattern"),
    (dict(sparse=SparseAttentionConfig(block_size=24)), "model.sparse.block_size"),
    (dict(linear=LinearAttentionConfig(num_query_groups=4)), "model.linear.num_query_groups"),
])
def test_unrepresentable_settings_are_refused_naming_the_field(change, field):
    cfg = hybrid_cfg("DSLD", True, LinearAttentionConfig())
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **change))
    with pytest.raises(ConversionError, match=field.replace(".", r"\.")):
        check_exportable(cfg)


def test_cli_refusals_leave_nothing_behind(exported, tmp_path, capsys):
    from omni_launch.convert_checkpoint import main

    _, cases, _ = exported
    case = cases["DSLD"]
    bad = config_to_dict(case["cfg"])
    bad["model"]["sparse"]["block_size"] = 24
    checkpoint.save_checkpoint(tmp_path / "bad-run", 0, [case["model"]], 0, bad, VOCAB)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"^error: .*model\.sparse\.block_size=24") as exc:
        main(["to-hf", "--checkpoint", str(tmp_path / "bad-run"), "--out", str(out)])
    assert "\n" not in str(exc.value)

    # published only when verified: not even the tokenizer files (written first) stay behind
    with pytest.raises(SystemExit, match=r"^error: verify failed"):
        main(["to-hf", "--checkpoint", str(case["ckpt"]), "--out", str(out), "--verify",
              "--tolerance", "-1"])

    folder = tmp_path / "edited"
    folder.mkdir()
    for f in case["folder"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "layer_pattern": "DDLD"}))
    with pytest.raises(SystemExit, match=r"^error: .*layer_pattern='DDLD' disagrees with megatron_model"):
        main(["from-hf", "--hf", str(folder), "--out", str(out)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad-run", "edited"]


@pytest.mark.parametrize("key, value, message", [
    ("model.layers.2.self_attn.out_norm.weight", None,
     r"missing decoder\.layers\.2\.self_attention\.out_norm\.weight"),
    ("model.layers.1.self_attn.k_proj.weight", torch.zeros(8, 64),
     r"model\.layers\.1\.self_attn\.k_proj\.weight: shape \(8, 64\), expected \(16, 64\)"),
    ("model.layers.0.mlp.stray.weight", torch.zeros(1), r"no place for.*mlp\.stray\.weight"),
], ids=["missing", "shape", "unknown"])
def test_import_refuses_bad_weights(exported, tmp_path, key, value, message):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "hf"
    folder.mkdir()
    source = exported[1]["DSLD"]["folder"]
    for name in ("config.json", "modeling_omni_hybrid.py"):
        (folder / name).write_bytes((source / name).read_bytes())
    state = load_file(source / "model.safetensors")
    if value is None:
        del state[key]
    else:
        state[key] = value
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ConversionError, match=message):
        hybrid_folder_to_megatron(folder, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
