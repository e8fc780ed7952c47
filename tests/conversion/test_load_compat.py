"""Loading a checkpoint into a run compares every field that changes the function computed and
names each difference (training/checkpoint.py check_same_model); from-hf's preset and --set
strings reproduce the imported model exactly."""
import sys
from pathlib import Path

import pytest

from megatron_omni.config import ConfigError, config_to_dict, load_config
from megatron_omni.config.presets import MODEL_PRESETS
from megatron_omni.config.schema import ModelConfig
from megatron_omni.conversion.checkpoints import matching_preset
from megatron_omni.training import checkpoint
from megatron_omni.training.checkpoint import check_same_model

from .test_qwen3_mapping import tiny_hf

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "launch"))
from convert_checkpoint import main  # noqa: E402


def common_of(overrides: list[str], vocab_size: int = 400) -> dict:
    return {"config": config_to_dict(load_config(None, overrides)), "vocab_size": vocab_size}


def refused(common: dict, overrides: list[str], allowed=None, vocab_size: int = 400) -> str:
    with pytest.raises(ConfigError) as err:
        check_same_model(common, load_config(None, overrides), vocab_size, "ck", allowed=allowed)
    return str(err.value)


def test_each_function_changing_field_is_named():
    message = refused(common_of([]), ["model.rope_theta=10000.0", "model.norm_eps=1e-5",
                                      "model.max_position_embeddings=128", "model.rope_scaling_factor=4.0"],
                      allowed=[])
    assert message.startswith("ck holds a different model; model.max_position_embeddings: checkpoint "
                              "4096 vs config 128; model.rope_theta: checkpoint 1000000.0 vs config "
                              "10000.0; model.rope_scaling_factor: checkpoint 1.0 vs config 4.0; ")
    assert "model.norm_eps: checkpoint 1e-06 vs config 1e-05" in message
    assert message.endswith("(set these to the checkpoint's values, or list intended changes (e.g. a "
                            "context extension) in checkpoint.load_changes)")
    scaled = ["model.rope_scaling_factor=4.0"]
    assert "model.rope_scaling: checkpoint linear vs config ntk" in refused(
        common_of(scaled), scaled + ["model.rope_scaling=ntk"])


def test_layer_pattern_and_the_settings_of_its_layer_types():
    hybrid = ["model.layer_pattern=SLLS"]
    assert "model.layer_pattern: checkpoint DDDD vs config SLLS" in refused(common_of([]), hybrid)
    assert "model.layer_pattern: checkpoint SLLS vs config SLLD" in refused(
        common_of(["model.layer_pattern=hybrid"]), ["model.layer_pattern=SLLD"])
    check_same_model(common_of(["model.layer_pattern=hybrid"]), load_config(None, hybrid), 400, "ck")
    message = refused(common_of(hybrid), hybrid + ["model.sparse.topk=8", "model.sparse.output_gate=false",
                                                   "model.linear.slopes=minimax"])
    assert ("model.sparse.topk: checkpoint 64 vs config 8; model.sparse.output_gate: checkpoint True vs "
            "config False; model.linear.slopes: checkpoint alibi vs config minimax") in message
    # settings of absent layer types, and kernel tiling, do not change the function
    check_same_model(common_of([]), load_config(None, ["model.sparse.topk=8"]), 400, "ck")
    check_same_model(common_of(hybrid), load_config(None, hybrid + ["model.linear.chunk_size=32"]), 400, "ck")


def test_omni_settings_and_what_does_not_count():
    omni = ["model.omni.preset=tiny"]
    message = refused(common_of(omni), omni + ["model.omni.tmrope=false", "model.omni.vision_projector=mlp",
                                               "model.omni.frames_per_package=3"])
    assert ("model.omni.vision_projector: checkpoint resampler vs config mlp; model.omni.frames_per_package: "
            "checkpoint 2 vs config 3; model.omni.tmrope: checkpoint True vs config False") in message
    check_same_model(common_of(omni), load_config(None, omni + [
        "model.init_std=0.1", "model.hidden_dropout=0.1", "model.omni.contrastive_weight=0.2",
        "model.omni.max_video_frames=4"]), 400, "ck")
    check_same_model(common_of(omni), load_config(None, []), 400, "ck")  # omni weights into the LLM


def test_vocabulary_must_be_the_same_and_load_changes():
    assert "vocabulary: checkpoint 331 vs this run 300" in refused(common_of([], 331), [], vocab_size=300)
    extend = ["model.rope_scaling_factor=4.0", "model.max_position_embeddings=16384"]
    check_same_model(common_of([]), load_config(None, extend), 400, "ck",
                     allowed=["model.rope_scaling_factor", "model.max_position_embeddings"])
    assert refused(common_of([]), extend, allowed=["model.rope_scaling_factor"]).startswith(
        "ck holds a different model; model.max_position_embeddings: checkpoint 4096 vs config 16384 (")
    with pytest.raises(ConfigError, match=r"checkpoint.load_changes=\['model.rope_factor'\]: "
                                          r"\['model.rope_factor'\] are not fields the load check compares"):
        check_same_model(common_of([]), load_config(None, []), 400, "ck", allowed=["model.rope_factor"])


def test_matching_preset():
    assert matching_preset(ModelConfig(**MODEL_PRESETS["qwen3-0.6b"])) == "qwen3-0.6b"
    assert matching_preset(ModelConfig(**{**MODEL_PRESETS["qwen3-0.6b"], "norm_eps": 1e-5})) == "custom"
    assert load_config(None, ["model.preset=custom"]).model == ModelConfig(preset="custom")


@pytest.mark.usefixtures("megatron_single_rank")
def test_from_hf_sets_reproduce_the_import(tmp_path, capsys):
    import json

    hf = tiny_hf(331, tied=False)
    hf.config.rope_parameters = {"rope_type": "linear", "rope_theta": 5e5, "factor": 2.0}
    hf.config.rms_norm_eps = 1e-5
    hf.save_pretrained(tmp_path / "hf")
    assert main(["from-hf", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["preset"] == "custom" and summary["model_sets"][0] == "model.preset=custom"
    source = checkpoint.resolve(tmp_path / "run")
    common = checkpoint.read_common(source)
    assert common["config"]["model"]["preset"] == "custom" and common["vocab_size"] == 331
    cfg = load_config(None, summary["model_sets"])
    check_same_model(common, cfg, 331, source, allowed=[])
    assert (cfg.model.rope_theta, cfg.model.rope_scaling_factor, cfg.model.norm_eps,
            cfg.model.max_position_embeddings) == (5e5, 2.0, 1e-5, 128)
    # a run config that keeps the defaults instead is refused, naming each field
    message = refused(common, ["model.preset=custom", "model.num_layers=2", "model.ffn_hidden_size=96",
                               "model.vocab_size=331"], allowed=[], vocab_size=331)
    assert ("model.max_position_embeddings: checkpoint 128 vs config 4096; model.rope_theta: checkpoint "
            "500000.0 vs config 1000000.0; model.rope_scaling_factor: checkpoint 2.0 vs config 1.0") in message
