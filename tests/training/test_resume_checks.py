"""Resuming a run folder with a config that would not continue it fails with a clear error
(training/checkpoint.py check_resumable), before dist_checkpointing meets mismatched state."""
import pytest

from megatron_omni.config import ConfigError, config_to_dict, load_config
from megatron_omni.training.checkpoint import check_resumable


def common_of(overrides: list[str]) -> dict:
    return {"config": config_to_dict(load_config(None, overrides)), "vocab_size": 400}


def test_same_run_resumes():
    check_resumable(common_of(["phase=4"]), load_config(None, ["phase=4"]), 400, "runs/x/iter_0000003")


def test_another_phase_or_trained_groups_is_refused_with_the_way_out():
    saved = common_of(["phase=1", "checkpoint.dir=runs/omni"])
    with pytest.raises(ConfigError, match=r"checkpoint.dir=runs/omni holds a phase 1 run training "
                       r"\['projectors'\] \(runs/omni/iter_0000020\); this run is phase 2 training "
                       r"\['vision_encoder', 'audio_encoder', 'projectors'\]\. .* new "
                       r"checkpoint.dir and checkpoint.load=runs/omni/iter_0000020"):
        check_resumable(saved, load_config(None, ["phase=2", "checkpoint.dir=runs/omni"]), 400,
                        "runs/omni/iter_0000020")
    saved = common_of(["phase=4", "training.trainable=[linear_attention]"])
    with pytest.raises(ConfigError, match=r"training \['linear_attention'\] .* training all parameters"):
        check_resumable(saved, load_config(None, ["phase=4"]), 400, "ck")


def test_another_model_is_refused():
    with pytest.raises(ConfigError, match="holds a different model; model.num_layers: checkpoint 4 vs config 6"):
        check_resumable(common_of([]), load_config(None, ["model.num_layers=6"]), 400, "ck")


def test_encoders_of_another_shape_and_text_checkpoint_into_omni_are_refused():
    omni = ["model.omni.preset=tiny"]
    with pytest.raises(ConfigError, match=r"model.omni.vision_overrides: checkpoint None vs config "
                       r"\{'image_size': 32\}"):
        check_resumable(common_of(omni), load_config(None, omni + ["model.omni.vision_overrides={image_size: 32}"]),
                        400, "ck")
    with pytest.raises(ConfigError, match="the checkpoint is the text-only LLM.*from-hf-omni"):
        check_resumable(common_of([]), load_config(None, omni), 400, "ck")
    check_resumable(common_of(omni + ["model.omni.contrastive_weight=0.2"]), load_config(None, omni), 400, "ck")
