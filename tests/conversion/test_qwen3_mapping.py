"""Qwen3 megatron ↔ HF mappings: logits against transformers, bit-exact round trips, HF folders,
and the error messages."""
import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

from megatron_omni.config import load_config
from megatron_omni.conversion.qwen3 import (ConversionError, hf_config, hf_to_megatron, load_hf_folder,
                                            megatron_to_hf, model_overrides_from_hf, save_hf_folder)
from megatron_omni.models.llm.model import PADDED_LOGIT, build_llm

pytestmark = pytest.mark.usefixtures("megatron_single_rank")

TINY = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
            rms_norm_eps=1e-6)


def omni_config(overrides: dict):
    """Our OmniConfig (local backend, fp32) with the given model fields (set directly: PyYAML
    reads an override like ``model.norm_eps=1e-06`` as a string)."""
    cfg = load_config(None, ["model.backend=local", "training.precision=fp32"])
    cfg.model = dataclasses.replace(cfg.model, **overrides)
    return cfg


def build_megatron(cfg, vocab_size: int, seed: int = 1):
    from megatron.core import tensor_parallel

    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return build_llm(cfg, vocab_size).eval()


def megatron_state(model) -> dict:
    return {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}


def load_megatron(model, state: dict) -> None:
    """load_state_dict that is strict except for megatron's `_extra_state` entries."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing), (missing, unexpected)


def tiny_hf(vocab_size: int, tied: bool, seed: int = 0) -> Qwen3ForCausalLM:
    """A random float32 HF Qwen3 with O(1) logits and non-trivial norm weights."""
    cfg = Qwen3Config(**{**TINY, "vocab_size": vocab_size}, tie_word_embeddings=tied,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, dtype=torch.float32)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
    return model


def hf_canonical(model) -> dict:
    """The HF state dict as save_pretrained stores it (a tied lm_head is not a separate tensor)."""
    state = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        del state["lm_head.weight"]
    return state


def tokens(vocab_size: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (2, 11), generator=torch.Generator().manual_seed(3))


def megatron_logits(model, toks: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(toks.shape[1]).expand_as(toks)
    with torch.no_grad():
        return model(toks, pos, None)


def assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    for k in a:
        assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("vocab_size,tied", [(300, True), (300, False), (256, False)],
                         ids=["v300-tied", "v300-untied", "v256-untied"])
def test_hf_weights_give_hf_logits(vocab_size, tied):
    hf = tiny_hf(vocab_size, tied)
    cfg = omni_config(model_overrides_from_hf(hf.config))
    model = build_megatron(cfg, vocab_size)
    load_megatron(model, hf_to_megatron(hf.state_dict(), cfg.model))

    toks = tokens(vocab_size)
    with torch.no_grad():
        ref = hf(toks).logits
    out = megatron_logits(model, toks)
    assert out.shape[-1] == (384 if vocab_size == 300 else 256)
    torch.testing.assert_close(out[..., :vocab_size], ref, atol=1e-5, rtol=0)
    assert torch.all(out[..., vocab_size:] == PADDED_LOGIT), "padding logits are masked"


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_hf_megatron_hf_bit_exact(tied):
    hf = tiny_hf(256, tied)
    model_cfg = omni_config(model_overrides_from_hf(hf.config)).model
    original = hf_canonical(hf)
    assert_states_equal(megatron_to_hf(hf_to_megatron(original, model_cfg), model_cfg, 256), original)


def test_hf_round_trip_pads_then_drops_the_padding_rows():
    hf = tiny_hf(300, tied=False)
    model_cfg = omni_config(model_overrides_from_hf(hf.config)).model
    mstate = hf_to_megatron(hf.state_dict(), model_cfg)
    assert mstate["embedding.word_embeddings.weight"].shape == (384, 64)
    assert not mstate["output_layer.weight"][300:].any()
    assert_states_equal(megatron_to_hf(mstate, model_cfg, 300), hf.state_dict())


@pytest.mark.parametrize("tied,te_names", [(True, False), (False, False), (False, True)],
                         ids=["tied", "untied", "untied-te-names"])
def test_megatron_hf_megatron_bit_exact(tied, te_names):
    cfg = omni_config({"num_layers": 2, "tie_embeddings": tied})
    state = megatron_state(build_megatron(cfg, 256))
    with torch.no_grad():  # norms start at one: make them distinguishable
        for k, v in state.items():
            if "layernorm" in k:
                v.add_(0.1 * torch.randn_like(v))
    if te_names:
        state = {k.replace("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight")
                  .replace("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"): v
                 for k, v in state.items()}
    hf = megatron_to_hf(state, cfg.model, 256, te_names=te_names)
    assert ("lm_head.weight" in hf) != tied
    assert_states_equal(hf_to_megatron(hf, cfg.model, te_names=te_names), state)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_saved_folder_loads_in_transformers(tmp_path, tied):
    cfg = omni_config({"num_layers": 2, "tie_embeddings": tied, "rope_theta": 10000.0, "init_std": 0.2})
    model = build_megatron(cfg, 300)
    hf_state = megatron_to_hf(megatron_state(model), cfg.model, 300)
    save_hf_folder(hf_state, hf_config(cfg.model, 300, torch.float32), tmp_path)

    hf, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert hf.config.vocab_size == 300 and hf.dtype == torch.float32
    toks = tokens(300)
    with torch.no_grad():
        ref = hf.eval()(toks).logits
    torch.testing.assert_close(megatron_logits(model, toks)[..., :300], ref, atol=1e-5, rtol=0)

    state, loaded_cfg = load_hf_folder(tmp_path)
    assert ("lm_head.weight" in state) != tied
    assert_states_equal(state, {k: v.contiguous() for k, v in hf_state.items()})
    overrides = model_overrides_from_hf(loaded_cfg)
    assert overrides == {**{k: getattr(cfg.model, k) for k in overrides}, "vocab_size": 300}


def test_load_index_sharded_folder(tmp_path):
    hf = tiny_hf(256, tied=False)
    state = hf_canonical(hf)
    hf.config.save_pretrained(tmp_path)
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[:7], "model-00002-of-00002.safetensors": keys[7:]}
    for name, names in shards.items():
        save_file({k: state[k].contiguous() for k in names}, tmp_path / name)
    weight_map = {k: name for name, names in shards.items() for k in names}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded, cfg = load_hf_folder(tmp_path)
    assert_states_equal(loaded, state)
    assert model_overrides_from_hf(cfg)["num_query_groups"] == 2

    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ConversionError, match="model-00002-of-00002.safetensors"):
        load_hf_folder(tmp_path)


def test_errors_name_key_and_shape():
    hf = tiny_hf(256, tied=False)
    model_cfg = omni_config(model_overrides_from_hf(hf.config)).model
    state = hf_canonical(hf)

    bad = {**state, "model.layers.1.self_attn.k_proj.weight": torch.zeros(16, 64)}
    with pytest.raises(ConversionError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight: expected "
                                              r"shape \(32, 64\), got \(16, 64\)"):
        hf_to_megatron(bad, model_cfg)
    missing = {k: v for k, v in state.items() if k != "model.layers.0.self_attn.q_norm.weight"}
    with pytest.raises(ConversionError, match=r"missing key model\.layers\.0\.self_attn\.q_norm\.weight"):
        hf_to_megatron(missing, model_cfg)
    tied_cfg = omni_config({**model_overrides_from_hf(hf.config), "tie_embeddings": True}).model
    with pytest.raises(ConversionError, match="lm_head.weight differs from model.embed_tokens.weight"):
        hf_to_megatron(state, tied_cfg)
    small_vocab = omni_config({**model_overrides_from_hf(hf.config), "vocab_size": 1000}).model
    with pytest.raises(ConversionError, match="model.vocab_size=1000"):
        hf_to_megatron(state, small_vocab)

    mstate = hf_to_megatron(state, model_cfg)
    bad = {**mstate, "decoder.layers.0.self_attention.linear_qkv.weight": torch.zeros(64, 64)}
    with pytest.raises(ConversionError, match=r"linear_qkv\.weight: expected shape \(128, 64\)"):
        megatron_to_hf(bad, model_cfg, 256)
    with pytest.raises(ConversionError, match="pass te_names=False"):
        megatron_to_hf(mstate, model_cfg, 256, te_names=True)
    with pytest.raises(ConversionError, match="unexpected key decoder.layers.0.mlp.linear_fc1.bias"):
        megatron_to_hf({**mstate, "decoder.layers.0.mlp.linear_fc1.bias": torch.zeros(192)}, model_cfg, 256)
    with pytest.raises(ConversionError, match=r"has 256 rows; a vocabulary of 300 is padded to 384"):
        megatron_to_hf(mstate, omni_config({**model_overrides_from_hf(hf.config), "vocab_size": 300}).model, 300)


def test_folder_and_config_errors(tmp_path):
    with pytest.raises(ConversionError, match="no config.json"):
        load_hf_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ConversionError, match="model_type='llama'"):
        load_hf_folder(tmp_path)
    hf = tiny_hf(256, tied=False)
    hf.config.save_pretrained(tmp_path)
    with pytest.raises(ConversionError, match="neither model.safetensors nor model.safetensors.index.json"):
        load_hf_folder(tmp_path)
    state = hf_canonical(hf)
    del state["model.norm.weight"]
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    with pytest.raises(ConversionError, match=r"missing key model\.norm\.weight"):
        load_hf_folder(tmp_path)

    with pytest.raises(ConversionError, match="attention_bias=True"):
        model_overrides_from_hf(Qwen3Config(**TINY, attention_bias=True))
    legacy = model_overrides_from_hf({"model_type": "qwen3", **TINY, "rope_theta": 5e5,
                                      "rope_scaling": {"rope_type": "linear", "factor": 4.0}})
    assert legacy["rope_theta"] == 5e5 and legacy["rope_scaling_factor"] == 4.0
    with pytest.raises(ConversionError, match="rope_type='yarn'"):
        model_overrides_from_hf({"model_type": "qwen3", **TINY,
                                 "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}})


QWEN3_CONFIG_4_51 = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
                     "max_position_embeddings", "initializer_range", "rms_norm_eps", "tie_word_embeddings",
                     "rope_theta", "rope_scaling", "attention_bias", "use_sliding_window",
                     "max_window_layers", "attention_dropout", "torch_dtype")
"""The config.json keys transformers 4.51's Qwen3Config (and PretrainedConfig's dtype) reads."""


@pytest.mark.parametrize("factor", [1.0, 4.0], ids=["default-rope", "linear-rope"])
def test_config_json_is_read_alike_by_transformers_4_and_5(tmp_path, factor):
    cfg = omni_config({"num_layers": 2, "rope_theta": 5e5, "rope_scaling_factor": factor, "norm_eps": 1e-5})
    model = build_megatron(cfg, 300)
    save_hf_folder(megatron_to_hf(megatron_state(model), cfg.model, 300), hf_config(cfg.model, 300, torch.float32),
                   tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert set(QWEN3_CONFIG_4_51) <= set(raw), sorted(set(QWEN3_CONFIG_4_51) - set(raw))
    assert (raw["rope_theta"], raw["torch_dtype"], raw["rms_norm_eps"], raw["vocab_size"]) == (
        5e5, "float32", 1e-5, 300)
    assert raw["rope_scaling"] == (None if factor == 1.0 else {"rope_type": "linear", "factor": 4.0})
    assert raw["rope_parameters"] == {"rope_type": "default" if factor == 1.0 else "linear", "rope_theta": 5e5,
                                      **({} if factor == 1.0 else {"factor": 4.0})}
    loaded = Qwen3Config.from_pretrained(tmp_path)  # transformers 5 reads both spellings alike
    assert loaded.rope_parameters == raw["rope_parameters"] and loaded.dtype == torch.float32
