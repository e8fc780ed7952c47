"""The `preferences` command (data_prep/multimodal/preferences.py) and the pair rows the loader
makes of its samples (megatron_omni/data/multimodal/pairs.py): exact targets and boundaries, the
prompt's media shared by both rows, the trajectory fields, tool results never targets (changing
them leaves the DPO loss unchanged), and bad records skipped by reason."""
import json

import pytest
import torch

from megatron_omni.config.schema import DpoConfig
from megatron_omni.data.multimodal.dataset import LoaderConfig
from megatron_omni.data.multimodal.pairs import PairReader, PairSources
from megatron_omni.data.sample_format import Manifest
from megatron_omni.training.dpo import dpo_loss_func
from omni_data_prep.multimodal import cli
from tests.synthetic_media import make_image, write_jsonl
from tests.training.dpo_data import trajectory_record

CONFIG = LoaderConfig(image_size=32, n_mels=80, pad_audio_to_30s=False)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, spm_path):
    root = tmp_path_factory.mktemp("prefs")
    make_image(root / "a.png", 16, 16, 10)
    records = [
        {"id": "img", "images": ["a.png"], "prompt": [{"from": "human", "value": "<image>what colour?"}],
         "chosen": "red", "rejected": "a blue dog"},
        trajectory_record("cat at the corner"),
        {"id": "no-chosen", "prompt": [{"from": "human", "value": "hi"}], "rejected": "x"},
        {"id": "media-in-response", "images": ["a.png"], "prompt": [{"from": "human", "value": "hi"}],
         "chosen": "<image>", "rejected": "x"},
        {"id": "mismatch", "prompt": [{"from": "human", "value": "<image>hi"}], "chosen": "a", "rejected": "b"},
    ]
    write_jsonl(root / "pairs.jsonl", records)
    manifest = cli.dispatch(["preferences", "--input", str(root / "pairs.jsonl"), "--tokenizer", str(spm_path),
                             "--output-dir", str(root / "out")])
    return root / "out", manifest


def _targets(tokenizer, row) -> str:
    keep = row["loss_mask"].bool()
    return tokenizer.decode(row["labels"][keep].tolist())


def test_manifest_counts_and_skips(prepared):
    out, manifest = prepared
    assert manifest.kind == "preference" and Manifest.load(out).kind == "preference"
    totals = manifest.totals()
    assert totals["counts"]["samples"] == 2 and totals["counts"]["media"]["image"] == 1
    assert totals["skipped"] == {"missing_key": 1, "bad_field": 1, "placeholder_mismatch": 1}


def test_rows_are_prompt_plus_each_response_sharing_the_media(prepared, tokenizer):
    out, _ = prepared
    sources = PairSources([str(out)], tokenizer, CONFIG, strict=True)
    (folder, key), chosen, rejected = sources.rows(0)
    assert (folder, key) == (0, "00000-000000")
    assert _targets(tokenizer, chosen) == "red<|im_end|>\n"
    assert _targets(tokenizer, rejected) == "a blue dog<|im_end|>\n"
    image = tokenizer.special_ids["<image>"]
    prompt = int((chosen["tokens"] == image).nonzero().max()) + 1 + len(tokenizer.encode("what colour?<|im_end|>\n"))
    assert torch.equal(chosen["tokens"][:prompt], rejected["tokens"][:prompt])
    assert not chosen["loss_mask"][:prompt - 1].any() and not rejected["loss_mask"][:prompt - 1].any()
    assert torch.equal(chosen["position_ids"][..., :prompt + 3], rejected["position_ids"][..., :prompt + 3])
    assert chosen["images"] is rejected["images"] and chosen["images"].shape[0] == 1  # decoded once
    assert rejected["tokens"][-1] == tokenizer.eod_id and rejected["loss_mask"][-1] == 0
    assert chosen["loss_mask"][-1] == 0  # its label would be the rejected response's first token
    assert chosen["expanded_length"] == len(chosen["tokens"]) and rejected["expanded_length"] == len(rejected["tokens"])


def test_trajectory_targets_are_the_assistant_turns_only(prepared, tokenizer):
    out, _ = prepared
    sources = PairSources([str(out)], tokenizer, CONFIG, strict=True)
    _, chosen, rejected = sources.rows(1)
    call = json.dumps({"arguments": {"q": "cat"}, "name": "search"}, sort_keys=True)
    assert _targets(tokenizer, chosen) == (f"searching\n<tool_call>{call}</tool_call><|im_end|>\n"
                                           "a cat is here<|im_end|>\n")
    assert "cat at the corner" in tokenizer.decode(chosen["tokens"].tolist())
    assert "please search" not in _targets(tokenizer, rejected)
    meta = sources.datasets[0].reader.raw(1)[4]
    assert meta.extra["trajectory_id"] == "traj-0"
    assert meta.extra["tool_calls"] == {"chosen": ["search"], "rejected": ["lookup"]}


def test_trajectory_loss_ignores_tool_result_tokens(prepared, tokenizer, megatron_single_rank):
    out, _ = prepared
    reader = PairReader(PairSources([str(out)], tokenizer, CONFIG, strict=True), 512, tokenizer.pad_id,
                        True, 32, 80, "cross_modal", None)
    batch, _ = reader[(1,)]
    batch.reference_logps = torch.zeros(2)
    logits = torch.randn(2, 512, tokenizer.vocab_size, generator=torch.Generator().manual_seed(0))
    d = DpoConfig(beta=0.1, sft_weight=0.5)
    loss = dpo_loss_func(d, batch, logits)[0]
    result = tokenizer.encode("cat at the corner")
    changed = 0
    for row in range(2):  # every occurrence of the tool result's tokens, as label and as token
        tokens = batch.tokens[row].tolist()
        for i in range(len(tokens) - len(result) + 1):
            if tokens[i:i + len(result)] == result:
                batch.tokens[row, i:i + len(result)] = 7
                batch.labels[row, i - 1:i - 1 + len(result)] = 7
                changed += 1
    assert changed == 2
    assert dpo_loss_func(d, batch, logits)[0].item() == loss.item()
    target = int(batch.loss_mask[0].nonzero()[0])  # a target label does change it
    batch.labels[0, target] = (batch.labels[0, target] + 1) % tokenizer.vocab_size
    assert dpo_loss_func(d, batch, logits)[0].item() != loss.item()
