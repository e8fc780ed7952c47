"""Every examples/*.yaml validates for the world size in its `# world_size: N` header."""
import re
from pathlib import Path

import pytest

from megatron_omni.config import load_config, validate
from megatron_omni.config.mixes import PHASE_MIXES, Schedule
from megatron_omni.plan import Hardware, check_fits

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples"
EXAMPLES = sorted(EXAMPLE_DIR.glob("*.yaml"))


def header_world_size(path: Path) -> int:
    found = re.search(r"^#\s*world_size:\s*(\d+)\s*$", path.read_text(), re.MULTILINE)
    assert found, f"{path.name}: add a '# world_size: N' comment naming the ranks it is laid out for"
    return int(found.group(1))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_validates_for_its_world_size(path):
    cfg = load_config(path)
    p = cfg.parallel
    assert validate(cfg, header_world_size(path)) == header_world_size(path) // (p.tp * p.pp * p.cp)


def test_omni_examples_follow_the_plan():
    """Seed plan 3.1.2 (phase 1: projectors only, lr 1e-3, warmup 2000, 50k steps, accumulation
    4), 3.1.3 (phase 2: encoders 1e-5, projectors 1e-4, LLM frozen), 3.1.4 / 7.2.2 (phase 3: the
    40/25/15/10/10 mix reached through four stages at 0/25/50/75% of the steps); the plan's
    encoder shapes and projectors in every omni example."""
    p1 = load_config(EXAMPLE_DIR / "omni_8b_phase1_8gpu.yaml")
    p2 = load_config(EXAMPLE_DIR / "omni_8b_phase2_8gpu.yaml")
    assert (p1.training.trainable, p1.training.lr, p1.training.warmup_steps, p1.training.train_steps) == \
        (["projectors"], 1e-3, 2000, 50_000)
    assert p1.training.global_batch_size // (p1.training.micro_batch_size * 8) == 4
    assert p2.training.trainable == ["vision_encoder", "audio_encoder", "projectors"]
    assert (p2.training.lr, p2.training.group_lr) == (1e-4, {"vision_encoder": 1e-5, "audio_encoder": 1e-5})
    assert p2.data.multimodal.image_text[0].endswith("corrupted")
    for name in ("omni_8b_phase3_32gpu.yaml", "omni_32b_phase3_64gpu.yaml"):
        cfg = load_config(EXAMPLE_DIR / name)
        stages = Schedule.from_config(cfg.data.multimodal.schedule).stages
        steps = cfg.training.train_steps
        assert [s.start_step for s in stages] == [0, steps // 4, steps // 2, 3 * steps // 4], name
        assert stages[-1].weights == pytest.approx(PHASE_MIXES[3]), name
        assert cfg.training.trainable is None and cfg.data.multimodal.max_video_frames == 64, name
    for path in EXAMPLES:
        cfg = load_config(path)
        if path.name.startswith("omni_") and cfg.model.preset.startswith("qwen3"):
            o = cfg.model.omni
            assert (o.vision, o.audio, o.vision_projector, o.audio_projector) == \
                ("siglip-so400m-patch14-384", "whisper-medium", "resampler", "conv_gmlp"), path.name


def test_phase_examples_follow_the_plan():
    """Seed plan 3.1.4 (phase 3: lr 1e-5 cosine, warmup 1%, 100k steps, bf16) and 3.1.5
    (phase 4: lr 5e-6, 32K, sequence + context parallel)."""
    for path in EXAMPLES:
        cfg = load_config(path)
        if cfg.phase == 3 and path.name.startswith("qwen3"):
            t = cfg.training
            assert (t.lr, t.lr_decay_style, t.train_steps, t.warmup_steps, t.precision) == \
                (1e-5, "cosine", 100_000, 1000, "bf16"), path.name
        if cfg.phase == 4 and "tiny" not in path.name:  # the plan's GPU configs
            assert cfg.training.lr == 5e-6 and cfg.data.seq_length == 32768, path.name
            assert cfg.parallel.sequence_parallel and cfg.parallel.cp > 1, path.name


def test_sft_examples_follow_the_plan():
    """Seed plan 3.1.6 / 7.1.2 phase 5: lr 2e-5, 3 epochs, warmup ratio 0.03, stage 1 at 8K with
    the ~10% text share (the phase-5 mix), stage 2 at 32K on long-CoT data (without CP: the
    planner ranks tp 8 above tp 4 x cp 2 at 32K on 8 GPUs, and fits it into 80 GiB), each from
    the stage before; 8 GPUs."""
    s1 = load_config(EXAMPLE_DIR / "omni_8b_sft_stage1_8gpu.yaml")
    s2 = load_config(EXAMPLE_DIR / "omni_8b_sft_stage2_8gpu.yaml")
    for cfg, seq in ((s1, 8192), (s2, 32768)):
        t = cfg.training
        assert (cfg.phase, t.lr, t.num_epochs, t.warmup_ratio, t.trainable) == (5, 2e-5, 3, 0.03, None)
        assert cfg.data.seq_length == seq and cfg.parallel.cp == 1 and cfg.data.multimodal.packing
    assert s1.data.multimodal.schedule is None and PHASE_MIXES[5]["text"] == pytest.approx(0.10)
    assert Schedule.from_config(s2.data.multimodal.schedule).stages[0].weights["text"] == pytest.approx(0.10)
    assert s1.checkpoint.load.startswith("runs/phase3/") and s2.checkpoint.load == s1.checkpoint.dir
    for name, cfg in (("omni_8b_sft_stage1_8gpu.yaml", s1), ("omni_8b_sft_stage2_8gpu.yaml", s2)):
        assert header_world_size(EXAMPLE_DIR / name) == 8
        check_fits(cfg, validate(cfg, 8), 8, Hardware(gpu_memory_gib=80.0))  # the planner: it fits an A100 80GB
    cp = load_config(EXAMPLE_DIR / "omni_8b_sft_stage2_8gpu.yaml",   # the CP layout its header names
                     ["parallel.tp=4", "parallel.cp=2", "training.recompute=full"])
    check_fits(cp, validate(cp, 8), 8, Hardware(gpu_memory_gib=80.0))


def test_dpo_examples_follow_the_plan():
    """Seed plan 3.1.7 / 7.1.2 phase 6: one node of 8 GPUs, ~50K preference pairs (one epoch),
    DPO's lr as the plan's DPO stage (1e-6); both DPO examples start policy and reference from
    the same checkpoint, one pair per micro-batch at least."""
    plan = load_config(EXAMPLE_DIR / "omni_8b_phase6_dpo_8gpu.yaml")
    assert header_world_size(EXAMPLE_DIR / "omni_8b_phase6_dpo_8gpu.yaml") == 8
    t, d = plan.training, plan.dpo
    assert (t.lr, d.beta, d.loss_type) == (1e-6, 0.1, "sigmoid")
    assert 49_000 <= t.train_steps * t.global_batch_size // 2 <= 51_000
    for name in ("omni_8b_phase6_dpo_8gpu.yaml", "omni_tiny_dpo_cpu.yaml"):
        cfg = load_config(EXAMPLE_DIR / name)
        assert cfg.phase == 6 and cfg.dpo.reference == cfg.checkpoint.load, name
        assert cfg.training.micro_batch_size % 2 == 0 and not cfg.data.multimodal.packing, name
