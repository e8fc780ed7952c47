"""The rl section's checks (config/validate_rl.py): each error names the field; phase 6 runs
GRPO with rl.grpo and DPO without it."""
import pytest

from megatron_omni.config import ConfigError, load_config, validate

BASE = ["phase=6", "model.omni.preset=tiny", "rl.grpo=true", "rl.reference=runs/sft", "data.seq_length=96",
        "rl.max_new_tokens_short=16", "rl.max_new_tokens_long=64", "training.global_batch_size=16",
        "training.micro_batch_size=4", "training.eval_interval=0"]


@pytest.mark.parametrize("change, world, message", [
    ([], 1, None),
    (["rl.prompts_per_step=2", "rl.group_size=8"], 2, None),
    (["phase=5"], 1, "rl.grpo=true but phase=5"),
    (["dpo.reference=runs/sft"], 1, "rl.grpo=true with dpo.reference set"),
    (["model.omni=null", "phase=6"], 1, "phase=6 .* needs the omni model"),
    (["rl.group_size=1", "training.global_batch_size=4"], 1, "rl.group_size=1 must be >= 2"),
    (["rl.inner_steps=0"], 1, "rl.inner_steps=0 must be >= 1"),
    (["rl.temperature=0"], 1, "rl.temperature=0.0 must be > 0"),
    (["rl.long_ratio=1.5"], 1, r"rl.long_ratio=1.5 must be in \[0, 1\]"),
    (["rl.top_p=0"], 1, r"rl.top_p=0.0 must be in \(0, 1\]"),
    (["rl.clip_low=1"], 1, r"rl.clip_low=1.0 must be in \[0, 1\)"),
    (["rl.clip_high=-0.1"], 1, "rl.clip_high=-0.1 must be >= 0"),
    (["rl.kl_coef=-1"], 1, "rl.kl_coef=-1.0 must be >= 0"),
    (["rl.reference=null"], 1, "rl.kl_coef=0.04 needs rl.reference"),
    (["rl.reference=null", "rl.kl_coef=0"], 1, None),
    (["rl.rewards={accuracy: 1, style: 2}"], 1, "rl.rewards=.*keyed by accuracy, format, repetition"),
    (["rl.rewards={}"], 1, "rl.rewards=.*keyed by"),
    (["training.global_batch_size=8"], 1, "training.global_batch_size=8 must equal rl.prompts_per_step x "
                                          "rl.group_size = 16"),
    (["rl.prompts_per_step=3", "training.global_batch_size=12", "training.micro_batch_size=2"], 2, "rl.prompts_per_step=3 is not divisible"),
    (["rl.max_new_tokens_long=96"], 1, "data.seq_length=96 leaves no room for a prompt beside 96 new tokens"),
    (["rl.max_new_tokens_long=96", "rl.long_ratio=0"], 1, None),   # no long rollouts
])
def test_rl_configs_are_checked_naming_the_field(change, world, message):
    cfg = load_config(None, BASE + change)
    if message is None:
        assert validate(cfg, world) == world
        return
    with pytest.raises(ConfigError, match=message):
        validate(cfg, world)


def test_phase6_without_grpo_still_needs_its_dpo_reference():
    cfg = load_config(None, [o for o in BASE if not o.startswith("rl.grpo")])
    with pytest.raises(ConfigError, match="phase 6 needs exactly one of dpo.reference"):
        validate(cfg, 1)


def test_missing_prompt_file_is_named(tmp_path):
    (tmp_path / "tok.model").write_text("")
    cfg = load_config(None, BASE + ["rl.kl_coef=0", "rl.reference=null", f"rl.prompts={tmp_path / 'no.jsonl'}",
                                    f"data.tokenizer={tmp_path / 'tok.model'}"])
    with pytest.raises(ConfigError, match=f"rl.prompts={tmp_path / 'no.jsonl'} does not exist"):
        validate(cfg, 1, check_inputs=True)


def test_grpo_examples_follow_the_plan():
    """Seed plan 3.1.7 / 7.1.2 phase 6 (MixedReasoningGRPO): 50:50 short/long rollouts, 256 / 2048
    new tokens at plan scale; policy and KL reference start from the same checkpoint."""
    from pathlib import Path

    examples = Path(__file__).resolve().parents[2] / "examples"
    plan = load_config(examples / "omni_8b_phase6_grpo_8gpu.yaml")
    assert (plan.rl.long_ratio, plan.rl.max_new_tokens_short, plan.rl.max_new_tokens_long) == (0.5, 256, 2048)
    for name in ("omni_8b_phase6_grpo_8gpu.yaml", "omni_tiny_grpo_cpu.yaml"):
        cfg = load_config(examples / name)
        assert cfg.phase == 6 and cfg.rl.grpo and cfg.rl.reference == cfg.checkpoint.load, name


def test_step_report_logs_the_rl_metrics():
    from megatron_omni.training.metrics import step_report

    m = {"loss": 0.5, "grad_norm": 1.0, "skipped": False, "rl/kl": 0.01, "rl/reward/long/total": 1.25,
         "rl/rollout_s": 2.0, "rl/train_s": 0.5}
    line, scalars = step_report(3, 10, m, {"lr": 1e-4}, 2.5)
    assert "| kl 0.01 |" in line and "reward/long/total 1.25" in line and "rollout_s 2 | train_s 0.5" in line
    assert scalars["rl/reward/long/total"] == 1.25 and scalars["rl/rollout_s"] == 2.0
