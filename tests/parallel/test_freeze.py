"""Freezing by parameter group (training/freeze.py): group assignment, config errors, and a
2-rank (TP=2) run where only the Lightning attention trains: every other tensor of the final
checkpoint is bit-identical to the starting weights."""
import pytest
import torch

from megatron_omni.config import ConfigError, load_config, validate
from megatron_omni.training.freeze import apply_trainable, check_something_trains, parameter_groups
from tests.parallel.conftest import TINY, checkpoint_tensors, torchrun


class Projector(torch.nn.Module):
    trainable_group = "projectors"

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 2)


def test_innermost_declared_group_wins_and_default_is_llm():
    model = torch.nn.Module()
    model.embedding = torch.nn.Embedding(3, 2)
    model.proj = Projector()
    model.proj.inner = torch.nn.Linear(2, 2)
    model.proj.inner.trainable_group = "vision_encoder"
    groups = parameter_groups(model)
    assert groups == {"embedding.weight": "llm", "proj.fc.weight": "projectors",
                      "proj.fc.bias": "projectors", "proj.inner.weight": "vision_encoder",
                      "proj.inner.bias": "vision_encoder"}
    counts = apply_trainable(model, ["projectors"])
    assert counts == {"projectors": 6}
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["proj.fc.weight", "proj.fc.bias"]
    assert apply_trainable(model, None) == {"llm": 6, "projectors": 6, "vision_encoder": 6}
    assert all(p.requires_grad for p in model.parameters())


def test_unknown_group_and_group_the_model_lacks_are_refused():
    with pytest.raises(ConfigError, match=r"training.trainable=\['encoder'\]: use a non-empty list of llm"):
        validate(load_config(None, ["training.trainable=[encoder]"]), 1)
    with pytest.raises(ConfigError, match=r"no parameters in \['audio_encoder'\]"):
        check_something_trains([{"llm": 5}, {"projectors": 2}], ["projectors", "audio_encoder"])


def test_only_linear_attention_trains_at_tp2(tmp_path, text_data):
    base = TINY + text_data + ["model.layer_pattern=SLLS", "model.linear.chunk_size=16",
                               "training.train_steps=2", "training.eval_interval=0",
                               "checkpoint.save_interval=0"]
    torchrun(1, base + [f"checkpoint.dir={tmp_path / 'init'}"], tmp_path / "init.json", "--save-init")
    torchrun(2, base + ["parallel.tp=2", "training.trainable=[linear_attention]",
                        f"checkpoint.dir={tmp_path / 'run'}",
                        f"checkpoint.load={tmp_path / 'init' / 'iter_0000000'}"], tmp_path / "run.json")
    before = checkpoint_tensors(tmp_path / "init" / "iter_0000000")
    after = checkpoint_tensors(tmp_path / "run" / "iter_0000002")
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    trained = sorted(k for k in before if k.startswith(("decoder.layers.1.self_attention.",
                                                        "decoder.layers.2.self_attention.")))
    assert changed == trained, changed
