"""Configuration: every check of validate.py and load.py raises a message that names the
field(s) and a valid alternative; valid configs pass and derive dp; the entry point's --dry-run."""
from pathlib import Path

import pytest
import yaml

from megatron_omni.config import ConfigError, load_config, validate
from megatron_omni.config.phases import check_phase_runnable

TINY = str(Path(__file__).resolve().parents[2] / "examples" / "tiny_cpu.yaml")


def config(*overrides):
    """The tiny preset (4 layers, 4 heads, 2 KV groups, ffn 192, seq 128) with overrides."""
    return load_config(None, list(overrides))


def write_yaml(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


# (overrides, world size, the message's exact pieces: the field(s), then the suggested value)
INVALID = {
    "heads_not_divisible_by_tp": (
        ["parallel.tp=3"], 3,
        ["model.num_attention_heads=4 is not divisible by parallel.tp=3", "use parallel.tp in [1, 2]"]),
    "query_groups_not_divisible_by_tp": (
        ["model.num_attention_heads=8", "parallel.tp=4"], 4,
        ["model.num_query_groups=2 is not divisible by parallel.tp=4", "use parallel.tp in [1, 2]"]),
    "heads_not_divisible_by_query_groups": (
        ["model.num_query_groups=3"], 1,
        ["model.num_attention_heads=4 is not divisible by model.num_query_groups=3",
         "use num_query_groups in [1, 2, 4]"]),
    "zero_query_groups": (["model.num_query_groups=0"], 1, ["model.num_query_groups=0 must be >= 1"]),
    "ffn_not_divisible_by_tp": (
        ["model.ffn_hidden_size=191", "parallel.tp=2"], 2,
        ["model.ffn_hidden_size=191 is not divisible by parallel.tp=2", "use ffn_hidden_size=190"]),
    "layers_not_divisible_by_pp": (
        ["parallel.pp=3"], 3,
        ["model.num_layers=4 is not divisible by parallel.pp*vpp = 3*1 = 3",
         "use parallel.pp in [1, 2, 4] (with vpp=1) or model.num_layers a multiple of 3"]),
    "layers_not_divisible_by_pp_times_vpp": (
        ["model.num_layers=8", "parallel.pp=4", "parallel.vpp=4"], 4,
        ["model.num_layers=8 is not divisible by parallel.pp*vpp = 4*4 = 16",
         "use parallel.pp in [2] (with vpp=4) or model.num_layers a multiple of 16"]),
    "layers_fit_no_pp_at_this_vpp": (
        ["parallel.pp=2", "parallel.vpp=3"], 2,
        ["parallel.pp*vpp = 2*3 = 6; use model.num_layers a multiple of 6"]),
    "vpp_without_pp": (
        ["parallel.vpp=2"], 1,
        ["parallel.vpp=2 needs parallel.pp > 1", "set parallel.vpp=null or raise parallel.pp"]),
    "global_batch_not_multiple_of_micro_times_dp": (
        ["training.global_batch_size=10"], 2,
        ["training.global_batch_size=10 is not a multiple of training.micro_batch_size*dp = 2*2 = 4",
         "use global_batch_size=8 or 12"]),
    "global_batch_below_micro_times_dp": (
        ["training.global_batch_size=2"], 2, ["use global_batch_size=4 or 8"]),
    "zero_micro_batch": (["training.micro_batch_size=0"], 1, ["training.micro_batch_size=0 must be >= 1"]),
    "interleaved_micro_batches_vs_pp": (
        ["parallel.pp=2", "parallel.vpp=2", "training.micro_batch_size=1", "training.global_batch_size=5"], 2,
        ["interleaved pipeline (parallel.vpp=2) needs the number of micro-batches (5 = ",
         "a multiple of parallel.pp=2", "use training.global_batch_size=4"]),
    "world_not_multiple_of_model_parallel": (
        ["parallel.tp=4", "model.num_query_groups=4"], 6,
        ["world size 6 is not a multiple of parallel.tp*pp*cp = 4*1*1 = 4",
         "launch a multiple of 4 processes, or choose tp*pp*cp in [1, 2, 3, 6]"]),
    "zero_tp": (["parallel.tp=0"], 1, ["parallel.tp=0 must be >= 1"]),
    "seq_length_vs_2cp": (
        ["parallel.cp=2", "model.backend=te", "data.seq_length=126"], 2,
        ["data.seq_length=126 must be divisible by 2*parallel.cp = 4", "use data.seq_length=124"]),
    "seq_length_vs_tp_with_sequence_parallel": (
        ["parallel.tp=2", "parallel.sequence_parallel=true", "data.seq_length=127"], 2,
        ["data.seq_length=127 must be divisible by parallel.tp=2 with sequence parallelism",
         "use data.seq_length=126"]),
    "seq_length_vs_tp_times_cp_with_sequence_parallel": (
        ["parallel.tp=4", "model.num_query_groups=4", "parallel.cp=2", "model.backend=te",
         "parallel.sequence_parallel=true", "data.seq_length=132"], 8,
        ["data.seq_length=132 must be divisible by parallel.tp*cp = 4*2 = 8 with sequence parallelism",
         "use data.seq_length=128"]),
    "sequence_parallel_with_tp1": (
        ["parallel.sequence_parallel=true"], 1,
        ["parallel.sequence_parallel=true needs parallel.tp > 1",
         "set parallel.sequence_parallel=false or raise parallel.tp"]),
    "seq_length_over_max_positions": (
        ["data.seq_length=8192"], 1,
        ["data.seq_length=8192 exceeds model.max_position_embeddings=4096",
         "raise max_position_embeddings or shorten seq_length"]),
    "warmup_not_below_train_steps": (
        ["training.warmup_steps=40"], 1,
        ["training.warmup_steps=40 must be smaller than the decay length "
         "(training.lr_decay_steps, or train_steps when null) = 40", "use warmup_steps=4"]),
    "warmup_not_below_decay_steps": (
        ["training.lr_decay_steps=20", "training.warmup_steps=25"], 1,
        ["training.warmup_steps=25 must be smaller", "= 20; use warmup_steps=2"]),
    "zero_train_steps": (["training.train_steps=0"], 1, ["training.train_steps=0 must be >= 1"]),
    "min_lr_over_lr": (
        ["training.min_lr=1.0e-2"], 1,
        ["training.min_lr=0.01 exceeds training.lr=0.003", "use min_lr <= lr, e.g. min_lr=0.0003"]),
    "bad_precision": (["training.precision=fp16"], 1,
                      ["training.precision='fp16'; use auto, bf16 or fp32"]),
    "bad_decay_style": (["training.lr_decay_style=wsd"], 1,
                        ["training.lr_decay_style='wsd'; use cosine, linear or constant"]),
    "bad_recompute": (["training.recompute=partial"], 1,
                      ["training.recompute='partial'; use null, selective or full"]),
    "bad_backend": (["model.backend=flash"], 1, ["model.backend='flash'; use auto, te or local"]),
    "phase_outside_plan": (["phase=7"], 1, ["phase=7 is not a phase of the plan; use one of 1-6"]),
    # model.layer_pattern and the S (sparse) / L (linear) settings (_validate_hybrid and helpers)
    "pattern_bad_letters": (
        ["model.layer_pattern=SLXS"], 1,
        ["model.layer_pattern='SLXS' has letters ['X']",
         "use D (dense), S (sparse) and L (linear), one per layer, or 'hybrid'"]),
    "pattern_wrong_length": (
        ["model.layer_pattern=SLS"], 1,
        ["model.layer_pattern='SLS' has 3 letters but model.num_layers=4",
         "give one letter per layer, e.g. 'SLLL', or 'hybrid'"]),
    "sparse_cp_chunk_vs_block": (
        ["model.layer_pattern=hybrid", "parallel.cp=2"], 2,
        ["data.seq_length=128 with parallel.cp=2: sparse (S) layers need seq_length / (2*cp) to "
         "be a multiple of model.sparse.block_size=64", "use data.seq_length=256"]),
    "sparse_block_size_not_power_of_two": (
        ["model.layer_pattern=SLLS", "model.sparse.block_size=48"], 1,
        ["model.sparse.block_size=48 must be a power of two >= 16, e.g. 64"]),
    "sparse_kernel_size_vs_stride": (
        ["model.layer_pattern=SDDD", "model.sparse.kernel_size=40"], 1,
        ["model.sparse.kernel_size=40 must be a positive multiple of model.sparse.kernel_stride=16",
         "e.g. kernel_size=32, kernel_stride=16"]),
    "sparse_block_size_vs_stride": (
        ["model.layer_pattern=SDDD", "model.sparse.kernel_size=96", "model.sparse.kernel_stride=96"], 1,
        ["model.sparse.block_size=64 must be a multiple of model.sparse.kernel_stride=96",
         "use kernel_stride in [1, 2, 4, 8, 16, 32]"]),
    "sparse_negative_topk": (["model.layer_pattern=SDDD", "model.sparse.topk=-1"], 1,
                             ["model.sparse.topk=-1 must be >= 0"]),
    "sparse_negative_init_blocks": (["model.layer_pattern=SDDD", "model.sparse.init_blocks=-1"], 1,
                                    ["model.sparse.init_blocks=-1 must be >= 0"]),
    "sparse_no_local_block": (["model.layer_pattern=SDDD", "model.sparse.local_blocks=0"], 1,
                              ["model.sparse.local_blocks=0 must be >= 1 (it counts the query's own block)"]),
    "sparse_zero_dense_len": (["model.layer_pattern=SDDD", "model.sparse.dense_len=0"], 1,
                              ["model.sparse.dense_len=0 must be >= 1"]),
    "linear_bad_slopes": (["model.layer_pattern=LDDD", "model.linear.slopes=cosine"], 1,
                          ["model.linear.slopes='cosine'; use alibi or minimax"]),
    "linear_chunk_not_power_of_two": (
        ["model.layer_pattern=LDDD", "model.linear.chunk_size=48"], 1,
        ["model.linear.chunk_size=48 must be a power of two >= 16, e.g. 64"]),
    "linear_groups_not_dividing_heads": (
        ["model.layer_pattern=LDDD", "model.linear.num_query_groups=3"], 1,
        ["model.linear.num_query_groups=3 must divide model.num_attention_heads=4",
         "use one of [1, 2, 4] or null (= num_attention_heads)"]),
    "linear_groups_vs_tp": (
        ["model.layer_pattern=LDDD", "parallel.tp=2", "model.linear.num_query_groups=1"], 2,
        ["and be divisible by parallel.tp=2; use one of [2, 4]"]),
}


@pytest.mark.parametrize("overrides, world_size, pieces", INVALID.values(), ids=INVALID.keys())
def test_invalid_combination_names_fields_and_fix(overrides, world_size, pieces):
    with pytest.raises(ConfigError) as err:  # choice fields fail as they load, the rest in validate
        validate(config(*overrides), world_size)
    for piece in pieces:
        assert piece in str(err.value)


@pytest.mark.parametrize("overrides, world_size, dp", [
    ([], 1, 1),
    (["parallel.tp=2", "parallel.sequence_parallel=true"], 8, 4),
    (["model.num_layers=8", "parallel.pp=2", "parallel.vpp=2"], 4, 2),
    (["parallel.cp=2", "model.backend=te", "parallel.tp=2", "parallel.sequence_parallel=true"], 8, 2),
    (["model.layer_pattern=hybrid", "parallel.tp=2"], 2, 1),
    (["model.sparse.block_size=48", "model.linear.slopes=x"], 1, 1),  # unused sections: not checked
    (["parallel.cp=2", "model.backend=local"], 4, 2),
    (["model.layer_pattern=hybrid", "parallel.cp=2", "data.seq_length=256"], 2, 1),
], ids=["tiny", "tp2_sp", "pp2_vpp2", "tp2_cp2", "hybrid_tp2", "dense_ignores_hybrid_settings",
        "local_cp2", "hybrid_cp2"])
def test_valid_config_derives_dp(overrides, world_size, dp):
    cfg = config(*overrides, "training.micro_batch_size=1")
    assert validate(cfg, world_size) == dp


# ----------------------------------------------------------------------------- loading


@pytest.mark.parametrize("overrides, pieces", [
    (["training.micro_batch=2"], ["unknown field training.micro_batch; did you mean training.micro_batch_size?"]),
    (["trainig.lr=1e-4"], ["unknown field trainig; did you mean training?"]),
    (["model.sparse.blok_size=32"], ["unknown field model.sparse.blok_size; did you mean model.sparse.block_size?"]),
    (["training.zzz=1"], ["unknown field training.zzz; valid fields: ['adam_beta1',"]),
    (["training.train_steps=abc"], ["training.train_steps='abc' has the wrong type; expected int"]),
    (["training.train_steps=2.5"], ["training.train_steps=2.5 has the wrong type; expected int"]),
    (["parallel.sequence_parallel=3"], ["parallel.sequence_parallel=3 has the wrong type; expected bool"]),
    (["training.lr=fast"], ["training.lr='fast' has the wrong type; expected float"]),
    (["data.train_blend=a"], ["data.train_blend='a' has the wrong type; expected list"]),
    (["training=3"], ["training: expected a mapping, got 3"]),
    (["training.lr=null"], ["training.lr may not be null"]),
    (["model.preset=qwen3-7b"], ["model.preset='qwen3-7b' is unknown; use one of ['custom', "
                                 "'qwen3-0.6b', 'qwen3-1.7b', 'qwen3-32b', 'qwen3-8b', 'tiny']"]),
    (["model.preset=[tiny]"], ["model.preset=['tiny'] is unknown; use one of"]),
], ids=["did_you_mean", "did_you_mean_section", "did_you_mean_nested", "valid_fields", "str_for_int",
        "fraction_for_int", "int_for_bool", "word_for_float", "str_for_list", "scalar_section",
        "null_not_nullable", "unknown_preset", "unhashable_preset"])
def test_load_error_names_field_and_fix(overrides, pieces):
    with pytest.raises(ConfigError) as err:
        config(*overrides)
    for piece in pieces:
        assert piece in str(err.value)


@pytest.mark.parametrize("item", ["training.lr", "=3", "training..lr=1", ".lr=1", "training.=1"])
def test_set_syntax_error(item):
    with pytest.raises(ConfigError, match=r"expected section\.field=value"):
        config(item)


def test_set_into_a_value_is_not_a_section():
    with pytest.raises(ConfigError, match=r"--set 'training.lr.x=2': lr is not a section"):
        config("training.lr=1.0e-3", "training.lr.x=2")


def test_values_coerce_and_presets_apply(tmp_path):
    # YAML 1.1 reads 1e-6 (no dot, unsigned exponent) as a string; float fields parse it.
    path = write_yaml(tmp_path, "model:\n  preset: qwen3-8b\n  num_layers: 2\n  norm_eps: 1e-6\n"
                                "training:\n  lr: 2e-5\n  train_steps: 8.0\nlogging:\n")
    cfg = load_config(path, ["training.min_lr=1e-6", "parallel.vpp=null", "logging.log_interval=3"])
    assert cfg.model.norm_eps == 1e-6 and cfg.training.lr == 2e-5 and cfg.training.min_lr == 1e-6
    assert cfg.training.train_steps == 8 and isinstance(cfg.training.train_steps, int)
    assert cfg.parallel.vpp is None
    assert cfg.logging.log_interval == 3  # --set into a section left empty (null) in the YAML
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.model.tie_embeddings) == (2, 4096, False)


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="the top level must be a mapping of sections"):
        load_config(write_yaml(tmp_path, "- 1\n- 2\n"))


@pytest.mark.parametrize("phase, omni, message", [
    (1, False, "phase=1 (adapter alignment: trains projectors only (LLM and encoders frozen)) needs the "
               "omni model; set model.omni"),
    (2, False, "phase=2 (encoder finetune: trains encoders + projectors (LLM frozen)) needs the omni model"),
    (5, False, "phase=5 (SFT: trains all parameters on conversations with loss masks) needs the omni "
               "model"),
    (6, False, "phase=6 (preference"),
])
def test_phases_the_model_cannot_run_say_so(phase, omni, message):
    with pytest.raises(ConfigError) as err:
        check_phase_runnable(phase, omni)
    assert message in str(err.value)


@pytest.mark.parametrize("phase, omni, name", [
    (3, False, "joint pretraining"), (4, False, "long context"), (1, True, "adapter alignment"),
    (2, True, "encoder finetune"), (3, True, "joint pretraining"), (4, True, "long context"), (5, True, "SFT"),
    (6, True, "preference")])
def test_runnable_phases(phase, omni, name):
    assert check_phase_runnable(phase, omni) == name


# ----------------------------------------------------------------------------- entry point


def test_dry_run_prints_config_with_derived_dp(monkeypatch, capsys):
    from omni_launch.pretrain_omni import main

    monkeypatch.setenv("WORLD_SIZE", "4")
    assert main(["--phase", "4", "--config", TINY, "--dry-run", "--layout-only",  # no data here
                 "--set", "training.micro_batch_size=2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["derived"] == {"dp": 2}  # 4 ranks / tp 2
    assert printed["phase"] == 4 and printed["parallel"]["tp"] == 2
    assert printed["training"]["micro_batch_size"] == 2


@pytest.mark.parametrize("argv, piece", [
    (["--set", "parallel.tp=3"], "model.num_attention_heads=4 is not divisible by parallel.tp=3"),
    (["--set", "training.lr"], "expected section.field=value"),
], ids=["invalid_layout", "bad_set_syntax"])
def test_dry_run_config_error_exits_2(monkeypatch, capsys, argv, piece):
    from omni_launch.pretrain_omni import main

    monkeypatch.setenv("WORLD_SIZE", "3")
    assert main(["--phase", "3", "--config", TINY, "--dry-run", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error:") and piece in err


def test_encoder_choices_are_the_preset_tables():
    import typing

    from megatron_omni.config.encoders import AUDIO_PRESETS, VISION_PRESETS
    from megatron_omni.config.schema import OmniModelConfig

    hints = typing.get_type_hints(OmniModelConfig)
    assert set(typing.get_args(hints["vision"])) == set(VISION_PRESETS)
    assert set(typing.get_args(hints["audio"])) == set(AUDIO_PRESETS)
