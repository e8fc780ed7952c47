"""Every examples/*.yaml validates for the world size in its `# world_size: N` header."""
import re
from pathlib import Path

import pytest

from megatron_omni.config import load_config, validate

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def header_world_size(path: Path) -> int:
    found = re.search(r"^#\s*world_size:\s*(\d+)\s*$", path.read_text(), re.MULTILINE)
    assert found, f"{path.name}: add a '# world_size: N' comment naming the ranks it is laid out for"
    return int(found.group(1))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_validates_for_its_world_size(path):
    cfg = load_config(path)
    p = cfg.parallel
    assert validate(cfg, header_world_size(path)) == header_world_size(path) // (p.tp * p.pp * p.cp)


def test_phase_examples_follow_the_plan():
    """Seed plan 3.1.4 (phase 3: lr 1e-5 cosine, warmup 1%, 100k steps, bf16) and 3.1.5
    (phase 4: lr 5e-6, 32K, sequence + context parallel)."""
    for path in EXAMPLES:
        cfg = load_config(path)
        if cfg.phase == 3 and path.name.startswith("qwen3"):
            t = cfg.training
            assert (t.lr, t.lr_decay_style, t.train_steps, t.warmup_steps, t.precision) == \
                (1e-5, "cosine", 100_000, 1000, "bf16"), path.name
        if cfg.phase == 4:
            assert cfg.training.lr == 5e-6 and cfg.data.seq_length == 32768, path.name
            assert cfg.parallel.sequence_parallel and cfg.parallel.cp > 1, path.name
