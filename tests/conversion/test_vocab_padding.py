"""An odd vocabulary (331, padded to 384): the padding logits are masked, so megatron's loss equals
transformers' (TP=1 and TP=2), the padding rows get no gradient, and the exported folder holds the
true vocabulary only, so sampling never emits a padding id (models/llm/model.py
mask_padded_logits, conversion/qwen3.py megatron_to_hf)."""
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from megatron_omni.conversion.qwen3 import GENERATION_DEFAULTS, hf_to_megatron, model_overrides_from_hf
from megatron_omni.models.llm.model import PADDED_LOGIT

from ..models.multirank import run_ranks
from .test_qwen3_mapping import build_megatron, hf_canonical, load_megatron, omni_config, tiny_hf, tokens

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "launch"))
from convert_checkpoint import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("megatron_single_rank")

V = 331


def labels_for(toks: torch.Tensor) -> torch.Tensor:
    return torch.randint(0, V, toks.shape, generator=torch.Generator().manual_seed(5))


def test_loss_equals_transformers_and_padding_rows_get_no_gradient():
    hf = tiny_hf(V, tied=False)
    cfg = omni_config(model_overrides_from_hf(hf.config))
    model = build_megatron(cfg, V)
    load_megatron(model, hf_to_megatron(hf.state_dict(), cfg.model))
    toks = tokens(V)
    labels = labels_for(toks)
    with torch.no_grad():
        ref = F.cross_entropy(hf(toks).logits.flatten(0, 1), labels.flatten(), reduction="none")
    loss = model(toks, torch.arange(toks.shape[1]).expand_as(toks), None, labels=labels)
    torch.testing.assert_close(loss.flatten(), ref, atol=1e-5, rtol=0)
    loss.sum().backward()
    grad = model.output_layer.weight.grad
    assert grad[:V].abs().max() > 0 and not grad[V:].any()


def _tp2_loss_equals_reference_over_the_true_vocabulary():
    """Each rank holds 192 of the 384 columns (rank 1 the 53 padding ones); the randomly
    initialised padding rows would change the loss if they were not masked."""
    from megatron.core import parallel_state as ps

    from megatron_omni.config import load_config
    from megatron_omni.models.llm.model import build_llm

    cfg = load_config(None, ["model.backend=local", "training.precision=fp32", "parallel.tp=2",
                             "model.tie_embeddings=false", "model.num_layers=2"])
    torch.manual_seed(0)
    model = build_llm(cfg, V)
    assert model.output_layer.weight[V - 192:].abs().max() > 0
    toks = tokens(V)
    labels = labels_for(toks)
    positions = torch.arange(toks.shape[1]).expand_as(toks)
    with torch.no_grad():
        loss = model(toks, positions, None, labels=labels)
        local = model(toks, positions, None)
    shards = [torch.empty_like(local) for _ in range(2)]
    torch.distributed.all_gather(shards, local, group=ps.get_tensor_model_parallel_group())
    full = torch.cat(shards, dim=-1)
    assert full.shape[-1] == 384 and torch.all(full[..., V:] == PADDED_LOGIT)
    ref = F.cross_entropy(full[..., :V].flatten(0, 1), labels.flatten(), reduction="none")
    torch.testing.assert_close(loss.flatten(), ref, atol=1e-5, rtol=0)


def test_tp2_loss_equals_reference_over_the_true_vocabulary():
    run_ranks(_tp2_loss_equals_reference_over_the_true_vocabulary, 2)


@pytest.fixture(scope="module")
def tokenizer_331(tmp_path_factory):
    from omni_data_prep.make_demo_corpus import make_demo_corpus
    from omni_data_prep.train_tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok331")
    corpus = make_demo_corpus(out / "corpus.jsonl", num_docs=200, seed=0)
    return str(train_tokenizer([str(corpus)], str(out / "tok"), vocab_size=V, seed=0))


def run_cli(capsys, *argv: str) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_import_export_round_trip_samples_only_real_ids(tmp_path, capsys, tokenizer_331):
    from megatron_omni.data.tokenizer import load_tokenizer

    hf = tiny_hf(V, tied=True)
    hf.save_pretrained(tmp_path / "hf")
    run_cli(capsys, "from-hf", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run"),
            "--tokenizer", tokenizer_331)
    summary = run_cli(capsys, "to-hf", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "out"))
    assert summary["max_abs_logit_diff"] <= 1e-5  # --verify is on by default

    out = tmp_path / "out"
    exported = load_file(out / "model.safetensors")
    assert exported["model.embed_tokens.weight"].shape == (V, 64)
    assert all(torch.equal(exported[k], v) for k, v in hf_canonical(hf).items())  # bit-identical
    tok = load_tokenizer(tokenizer_331)
    generation = json.loads((out / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["bos_token_id"], generation["pad_token_id"]) == (
        tok.eod_id, tok.eod_id, tok.pad_id)
    assert {k: generation[k] for k in GENERATION_DEFAULTS} == GENERATION_DEFAULTS

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.config.vocab_size == V
    torch.manual_seed(0)
    prompt = tokens(V)[:, :4]
    ids = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=0,
                         top_p=1.0, temperature=2.0, max_new_tokens=40, min_new_tokens=40,
                         num_return_sequences=4)
    assert ids.shape == (8, 44) and int(ids.max()) < V
