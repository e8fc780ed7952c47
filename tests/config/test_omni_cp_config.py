"""The omni model at phase 4 with context parallelism: the layouts it accepts, and the config
errors (naming the fields and a valid value) for the ones it cannot run."""
import pytest

from megatron_omni.config import ConfigError, load_config, validate

OMNI_CP = ["phase=4", "model.omni.preset=tiny", "parallel.cp=2", "data.seq_length=256"]


@pytest.mark.parametrize("overrides, world", [
    ([], 2),
    (["parallel.tp=2", "parallel.sequence_parallel=true"], 4),
    (["parallel.pp=2", "parallel.modality_decoupled=true"], 4),
    (["model.layer_pattern=hybrid", "model.sparse.block_size=64"], 2),
    (["parallel.cp=4", "data.seq_length=512", "model.layer_pattern=SLDL", "model.sparse.block_size=64"], 4),
])
def test_omni_context_parallel_layouts_validate(overrides, world):
    cfg = load_config(None, OMNI_CP + overrides)
    assert validate(cfg, world) == 1


@pytest.mark.parametrize("overrides, world, message", [
    (["data.seq_length=250"], 2,
     "data.seq_length=250 must be divisible by 2*parallel.cp = 4 (load-balanced context parallel); "
     "use data.seq_length=248"),
    (["model.layer_pattern=hybrid", "data.seq_length=320", "model.sparse.block_size=64"], 2,
     "data.seq_length=320 with parallel.cp=2: sparse (S) layers need seq_length / (2*cp) to be a multiple "
     "of model.sparse.block_size=64; use data.seq_length=256"),
    (["parallel.tp=4", "model.num_query_groups=4", "parallel.sequence_parallel=true", "data.seq_length=252"], 8,
     "data.seq_length=252 must be divisible by parallel.tp*cp = 4*2 = 8 with sequence parallelism; "
     "use data.seq_length=248"),
    (["phase=6"], 2,
     "parallel.cp=2 with phase=6: the preference loss sums each sample's log-probabilities over the whole "
     "sequence, which is not split over context-parallel ranks; use parallel.cp=1"),
])
def test_omni_context_parallel_errors_name_the_field(overrides, world, message):
    with pytest.raises(ConfigError) as err:
        validate(load_config(None, OMNI_CP + overrides), world)
    assert message in str(err.value)
