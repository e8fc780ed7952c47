"""Known bad configs, each refused with the same one `config error:` line (naming the field and a
valid value) by ``launch/pretrain_omni.py --dry-run`` and by the launch itself: the trainer's
entry (Trainer, through the same main()) before any model is built.

Each case starts from a config the launch accepts (the tiny text model, or the tiny omni
example, with a tokenizer file and text data that exist) and breaks one thing. The trainer path
runs in this process on a 1-rank gloo group (validate needs only the world size)."""
import socket
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
OMNI = str(ROOT / "examples" / "omni_tiny_cpu.yaml")
TEXT = ["training.train_steps=4", "training.warmup_steps=1"]
"""The tiny text model (defaults); "{data}" in a setting is the fixture's folder of inputs."""
OMNI_SETS = ["parallel.tp=1", "phase=1", "data.tokenizer={data}/tok.model"] + [
    f"data.multimodal.{m}=[{{data}}/{m}]" for m in ("text", "image_text", "video", "audio", "cross_modal")]
"""The tiny omni example on one rank, its sources folders that exist."""

# name: (omni example?, overrides, pieces of the message: the field(s) and a valid value)
CASES = {
    "omni_with_eval_interval": (True, ["training.eval_interval=5"],
                                ["training.eval_interval must be 0 with model.omni unless "
                                 "data.multimodal.valid lists", "set training.eval_interval=0"]),
    "omni_valid_missing": (True, ["training.eval_interval=5", "data.multimodal.valid=[{data}/nowhere]"],
                           ["data.multimodal.valid[0]={data}/nowhere does not exist"]),
    "num_epochs_text": (False, ["training.num_epochs=2"],
                        ["training.num_epochs needs model.omni", "training.num_epochs=null"]),
    "num_epochs_zero": (True, ["training.num_epochs=0"], ["training.num_epochs=0 must be >= 1"]),
    "warmup_ratio_bad": (False, ["training.warmup_ratio=1.5"],
                         ["training.warmup_ratio=1.5 must be in [0, 1)", "e.g. 0.03"]),
    "no_tokenizer": (False, ["data.tokenizer=null"],
                     ["data.tokenizer is not set", "e.g. data.tokenizer=hf/Qwen3-0.6B/tokenizer.json"]),
    "tokenizer_missing": (False, ["data.tokenizer={data}/missing.model"],
                          ["data.tokenizer={data}/missing.model does not exist",
                           "give an existing sentencepiece .model or tokenizer.json"]),
    "tokenizer_wrong_kind": (False, ["data.tokenizer={data}/tok.txt"],
                             ["data.tokenizer={data}/tok.txt is neither a sentencepiece .model",
                              "tokenizer.json"]),
    "packed_with_te_backend": (False, ["data.packed=true", "training.micro_batch_size=1", "model.backend=te"],
                               ["data.packed=true: dense (D) layers", "set model.backend=local"]),
    "packed_with_micro_batch_2": (False, ["data.packed=true"],
                                  ["data.packed=true packs", "set training.micro_batch_size=1"]),
    "bad_precision": (False, ["training.precision=fp16"], ["training.precision='fp16'; use auto, bf16 or fp32"]),
    "bad_recompute": (False, ["training.recompute=partial"],
                      ["training.recompute='partial'; use null, selective or full"]),
    "bad_rope_scaling": (False, ["model.rope_scaling=yarn"], ["model.rope_scaling='yarn'; use linear or ntk"]),
    "bad_projector": (True, ["model.omni.vision_projector=linear"],
                      ["model.omni.vision_projector='linear'; use resampler or mlp"]),
    "bad_n_mels": (True, ["data.multimodal.n_mels=64"], ["data.multimodal.n_mels=64; use 80 or 128"]),
    "tp_not_dividing_heads": (False, ["parallel.tp=3"],
                              ["model.num_attention_heads=4 is not divisible by parallel.tp=3",
                               "use parallel.tp in [1, 2]"]),
    "phase_outside_plan": (False, ["phase=7"], ["phase=7 is not a phase of the plan; use one of 1-6"]),
    "text_model_in_phase_1": (False, ["phase=1"], ["phase=1 (adapter alignment", "set model.omni"]),
    "unknown_trainable_group": (False, ["training.trainable=[encoder]"],
                                ["training.trainable=['encoder']: use a non-empty list of llm"]),
    "trainable_group_the_model_lacks": (False, ["training.trainable=[vision_encoder]"],
                                        ["training.trainable=['vision_encoder']: this model has no parameters "
                                         "in ['vision_encoder']", "list only parts it has: llm"]),
    "negative_group_lr": (True, ["training.group_lr={projectors: -1.0}"],
                          ["training.group_lr has {'projectors': -1.0}",
                           "e.g. {vision_encoder: 1e-5, projectors: 1e-4}"]),
    "negative_mix_weight": (True, ["data.multimodal.schedule={mix: {text: -1, image_text: 1}}"],
                            ["weights must be non-negative", "e.g. {phase: 3}"]),
    "mix_draws_empty_modality": (True, ["data.multimodal.audio=[]"],
                                 ["data.multimodal.audio is empty but the schedule", "list its prepared folders"]),
    "log_interval_zero": (False, ["logging.log_interval=0"],
                          ["logging.log_interval=0 must be >= 1", "logging.log_interval=1"]),
    "adam_beta1_over_1": (False, ["training.adam_beta1=1.5"],
                          ["training.adam_beta1=1.5 must be in [0, 1)", "e.g. 0.9"]),
    "negative_seq_length": (False, ["data.seq_length=-128"],
                            ["data.seq_length=-128 must be >= 1", "e.g. 4096"]),
    "negative_lr": (False, ["training.lr=-1e-3"], ["training.lr=-0.001 must be > 0", "e.g. lr=3e-4"]),
    "negative_min_lr": (False, ["training.min_lr=-1e-4"],
                        ["training.min_lr=-0.0001 must be >= 0", "e.g. min_lr=0.0003"]),
    "zero_adam_eps": (False, ["training.adam_eps=0"], ["training.adam_eps=0.0 must be > 0", "e.g. 1e-8"]),
    "negative_save_interval": (False, ["checkpoint.save_interval=-1"],
                               ["checkpoint.save_interval=-1 must be >= 0", "checkpoint.save_interval=1"]),
    "zero_eval_steps": (False, ["training.eval_steps=0"],
                        ["training.eval_steps=0 must be >= 1", "training.eval_steps=1"]),
    "dropout_one": (False, ["model.hidden_dropout=1.0"],
                    ["model.hidden_dropout=1.0 must be in [0, 1)", "e.g. 0.0"]),
    "zero_vpp": (False, ["parallel.vpp=0"], ["parallel.vpp=0 must be >= 1 or null"]),
    "train_blend_missing": (False, ["data.train_blend=[{data}/nothing_text_document]"],
                            ["data.train_blend: {data}/nothing_text_document.bin does not exist",
                             "make it with data_prep/preprocess_text.py"]),
    "train_blend_without_idx": (False, ["data.train_blend=[{data}/half_text_document]"],
                                ["data.train_blend: {data}/half_text_document.idx does not exist"]),
    "train_blend_odd_weights": (False, ["data.train_blend=[1.0, {data}/a_text_document, 2.0]"],
                                ["expected alternating positive weights and prefixes",
                                 "e.g. [0.7, data/a_text_document, 0.3, data/b_text_document]"]),
    "omni_source_missing": (True, ["data.multimodal.image_text=[{data}/no_images]"],
                            ["data.multimodal.image_text[0]={data}/no_images does not exist",
                             "give a prepared folder (data_prep/multimodal)"]),
    "no_validation_share": (False, ["data.split=100,0,0", "training.eval_interval=2"],
                            ["training.eval_interval=2 but data.split='100,0,0' leaves no validation",
                             "e.g. data.split=95,5,0"]),
    "split_not_percentages": (False, ["data.split=most"],
                              ["data.split='most': give train,valid,test percentages", "e.g. 95,5,0"]),
    "checkpoint_load_missing": (False, ["checkpoint.load={data}/no_run"],
                                ["checkpoint.load={data}/no_run does not exist", "or checkpoint.load=null"]),
    "teacher_missing": (False, ["phase=4", "distill.teacher={data}/no_teacher"],
                        ["distill.teacher={data}/no_teacher does not exist"]),
    "global_batch_not_multiple": (False, ["training.global_batch_size=7"],
                                  ["training.global_batch_size=7 is not a multiple",
                                   "use global_batch_size=6 or 8"]),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    """A folder with a tokenizer file and indexed-binary files (validate checks they exist)."""
    root = tmp_path_factory.mktemp("inputs")
    for name in ("tok.model", "tok.txt", "a_text_document.bin", "a_text_document.idx", "half_text_document.bin"):
        (root / name).write_bytes(b"")
    for m in ("text", "image_text", "video", "audio", "cross_modal"):
        (root / m).mkdir()
    return str(root)


@pytest.fixture(scope="module")
def process_group():
    """The 1-rank gloo group the trainer's entry finds initialised (torchrun's, in a launch)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def argv(omni: bool, overrides: list[str], data: str, run_dir: Path) -> list[str]:
    if omni:
        base = ["--config", OMNI] + [x for s in OMNI_SETS for x in ("--set", s.replace("{data}", data))]
    else:
        base = [x for s in TEXT + [f"data.tokenizer={data}/tok.model",
                                   f"data.train_blend=[{data}/a_text_document]"] for x in ("--set", s)]
    sets = [x for s in overrides for x in ("--set", s.replace("{data}", data))]
    return ["--phase", "1" if omni else "3", *base, "--set", f"checkpoint.dir={run_dir}", *sets]


def config_error(capsys, args: list[str]) -> str:
    from omni_launch.pretrain_omni import main

    assert main(args) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: "), err
    return lines[0]


def test_the_base_configs_pass_the_dry_run(data, tmp_path, monkeypatch, capsys):
    from omni_launch.pretrain_omni import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for omni in (False, True):
        assert main([*argv(omni, [], data, tmp_path), "--dry-run"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("omni, overrides, pieces", CASES.values(), ids=CASES.keys())
def test_dry_run_and_launch_refuse_alike(omni, overrides, pieces, data, tmp_path, monkeypatch, capsys,
                                          process_group):
    from megatron_omni.training import trainer

    def no_model(*args, **kwargs):
        raise AssertionError("the trainer built a model for a bad config")

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(trainer, "build_model", no_model)
    args = argv(omni, overrides, data, tmp_path)
    dry = config_error(capsys, [*args, "--dry-run"])
    launch = config_error(capsys, args)
    assert dry == launch
    for piece in pieces:
        assert piece.replace("{data}", data) in dry, (piece, dry)


def test_layout_only_dry_run_skips_the_inputs(data, tmp_path, monkeypatch, capsys):
    from omni_launch.pretrain_omni import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = [*argv(False, ["data.tokenizer=null", "data.train_blend=[]"], data, tmp_path), "--dry-run"]
    assert main([*args, "--layout-only"]) == 0
    capsys.readouterr()
    assert "data.tokenizer is not set" in config_error(capsys, args)
