"""Dense → hybrid conversion of an omni checkpoint (launch/convert_dense_to_hybrid.py on a tiny
dense omni checkpoint, "DSL" with the Lightning layer's K/V heads replicated 2 → 4): the vision
and audio encoders, both projectors, the embedding and every tensor of the dense-typed layer are
bit-identical to the source; the hybrid omni checkpoint builds from its own saved config
(model.omni + model.layer_pattern) and runs a forward in which the merged media embeddings and
the D layer's output equal the dense model's bit for bit while the S/L layers change the logits;
omni-specific bad inputs end with one ``error:`` line and leave nothing behind."""
import contextlib
import dataclasses
import io
import json

import pytest
import torch

from megatron_omni.config import config_from_dict, config_to_dict, load_config
from megatron_omni.config.schema import OmniModelConfig
from megatron_omni.conversion.checkpoints import single_rank_config, single_rank_model
from megatron_omni.conversion.hybrid import dense_to_hybrid, replicate_kv_heads
from megatron_omni.conversion.qwen3 import ConversionError
from megatron_omni.models.omni.model import MEDIA_MODULES, OmniModel
from megatron_omni.training import checkpoint
from tests.omni_batches import PLACEHOLDER_IDS, micro_batch
from tests.parallel.conftest import checkpoint_tensors

from .test_conversion_errors import convert_dense_to_hybrid, fails
from .test_dense_to_hybrid import DENSE, HYBRID, _states

pytestmark = pytest.mark.usefixtures("megatron_single_rank")

VOCAB, PATTERN, SEQ = 200, "DSL", 64
HYBRID_SETS = ["--set", "model.linear.num_query_groups=4", "--set", "model.linear.chunk_size=16"]
MEDIA = tuple(f"{name}." for name in MEDIA_MODULES)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(dense checkpoint, hybrid run folder, the CLI's argv, its JSON summary) of a tiny 3-layer
    omni model converted to PATTERN."""
    root = tmp_path_factory.mktemp("hybrid_omni")
    cfg = load_config(None, ["phase=3", "model.num_layers=3", "model.omni.preset=tiny"])
    dense = single_rank_model(cfg, VOCAB, omni=True)
    path = checkpoint.save_checkpoint(root / "dense", 0, [dense], 0, config_to_dict(cfg), VOCAB)
    out = root / "hybrid"
    argv = ["--dense", str(root / "dense"), "--out", str(out), "--pattern", PATTERN, *HYBRID_SETS]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert convert_dense_to_hybrid.main(argv) == 0
    return path, out, argv, json.loads(printed.getvalue().strip().splitlines()[-1])


def test_encoders_projectors_and_dense_layers_are_bit_identical(converted):
    dense_path, out, _, summary = converted
    assert summary["replicated"] == ["llm.decoder.layers.2.self_attention.linear_qkv.weight"]
    assert sorted(summary["fresh"]) == [f"llm.decoder.layers.{i}.self_attention.{n}" for i, n in (
        (1, "linear_gate.weight"), (2, "linear_gate.weight"), (2, "out_norm.weight"))]
    common = checkpoint.read_common(summary["checkpoint"])
    saved = config_from_dict(common["config"]).model
    assert saved.layer_pattern == PATTERN and saved.omni == config_from_dict(
        checkpoint.read_common(dense_path)["config"]).model.omni

    dense, hybrid = checkpoint_tensors(dense_path), checkpoint_tensors(out / "iter_0000000")
    media = [k for k in dense if k.startswith(MEDIA)]
    assert {k.split(".")[0] for k in media} == set(MEDIA_MODULES)
    stacked = "decoder.layers."  # all-D checkpoints stack the layers: decoder.layers.<name> [L, ...]
    compared = 0
    for key, value in dense.items():
        if not key.startswith(stacked):  # encoders, projectors, embedding, final norm
            assert torch.equal(hybrid[key], value), key
            compared += 1
            continue
        name = key[len(stacked):]
        for i, letter in enumerate(PATTERN):
            got = hybrid[f"{stacked}{i}.{name}"]
            want = (replicate_kv_heads(value[i], 4, 2, 4, 16)
                    if letter == "L" and name == "self_attention.linear_qkv.weight" else value[i])
            assert torch.equal(got, want), f"layer {i} {name}"
            compared += 1
    layer_keys = [k for k in dense if k.startswith(stacked)]
    assert len(layer_keys) == 8 and compared == len(dense) + (len(PATTERN) - 1) * len(layer_keys)
    assert set(hybrid) - set(dense) >= {"decoder.layers.2.self_attention.out_norm.weight"}


def _omni(checkpoint_path) -> OmniModel:
    """The TP=1 omni model of a checkpoint's own saved config, loaded, in eval mode."""
    common = checkpoint.read_common(checkpoint_path)
    cfg = single_rank_config(config_from_dict(common["config"]), common["dtype"])
    model = OmniModel(cfg, common["vocab_size"], PLACEHOLDER_IDS)
    checkpoint.load_checkpoint(checkpoint_path, [model])
    return model.eval()


def test_hybrid_omni_checkpoint_builds_and_runs_a_forward(converted):
    dense_path, out, _, _ = converted
    dense, hybrid = _omni(dense_path), _omni(out / "iter_0000000")
    assert [type(layer.self_attention).__name__ for layer in hybrid.llm.decoder.layers] == [
        "SelfAttention", "InfLLMv2Attention", "LightningAttention"]
    batch = micro_batch(dense.omni, ["image", "cross"], SEQ, VOCAB, seed=1)
    seen = {}
    outputs = {}
    for name, model in (("dense", dense), ("hybrid", hybrid)):
        hook = model.llm.decoder.layers[0].register_forward_hook(
            lambda module, args, output, name=name: seen.__setitem__(name, output[0].detach()))
        with torch.no_grad():
            seen[f"{name}_embed"] = model.embed(batch.tokens, batch)
            outputs[name] = model(batch.tokens, batch.position_ids, None, labels=batch.labels, batch=batch)
        hook.remove()
    assert torch.equal(seen["hybrid_embed"], seen["dense_embed"])  # the same media tokens merged
    assert torch.equal(seen["hybrid"], seen["dense"])              # layer 0 (D): same TMRoPE, same weights
    assert torch.isfinite(outputs["hybrid"]).all() and outputs["hybrid"].shape == (2, SEQ)
    assert not torch.allclose(outputs["hybrid"], outputs["dense"], atol=1e-3)  # S and L layers differ


def test_omni_bad_inputs_are_refused(converted, tmp_path):
    dense_path, out, argv, _ = converted
    main, target = convert_dense_to_hybrid.main, tmp_path / "out"
    base = ["--dense", str(dense_path), "--out", str(target), "--pattern", PATTERN]
    fails(main, base + ["--set", "model.omni.image_tokens=9"],
          "the encoders and projectors are copied from the dense checkpoint, so the hybrid model needs "
          "its model.omni; model.omni.image_tokens: dense 4 vs hybrid 9", target)
    fails(main, base + ["--set", "model.omni=null"],
          "the dense checkpoint is the omni model and its encoders and projectors are copied", target)
    fails(main, base + ["--set", "model.omni.tmrope=false"],
          "the encoders and projectors are copied from the dense checkpoint, so the hybrid model needs "
          "its model.omni; model.omni.tmrope: dense True vs hybrid False", target)
    fails(main, ["--dense", str(out), "--out", str(target), "--pattern", PATTERN],
          "the source must be dense (model.layer_pattern null or all D), got model.layer_pattern='DSL'", target)
    fails(main, base[:-1] + ["DS"], "model.layer_pattern='DS' has 2 letters", target)
    fails(main, argv, f"{out}: already exists", out)


def test_text_source_with_omni_hybrid_config_is_refused():
    dense, init = _states()
    with pytest.raises(ConversionError, match="the dense checkpoint is the text-only LLM but the hybrid "
                                              "config sets model.omni"):
        dense_to_hybrid(dense, DENSE, dataclasses.replace(HYBRID, omni=OmniModelConfig()), init)
