"""The planner's parameter, gradient and optimizer byte counts equal those of the model the
trainer builds (one CPU rank: trainer.build_model + build_optimizer, one optimizer step so Adam
holds its state): text, hybrid and omni tiny models, a frozen phase, fp32 and bf16, and a mid-size
Qwen3-0.6B-shaped decoder."""
import pytest
import torch

from megatron_omni.config import load_config
from megatron_omni.plan.memory import static_bytes
from megatron_omni.plan.params import rank_parameters
from megatron_omni.training.freeze import parameter_groups
from megatron_omni.training.trainer import build_model, build_optimizer
from tests.omni_batches import PLACEHOLDER_IDS

CASES = {
    "tiny": [],
    "tiny_untied_fp32": ["model.tie_embeddings=false", "training.precision=fp32"],
    "tiny_hybrid_bf16": ["model.num_layers=8", "model.layer_pattern=hybrid", "training.precision=bf16"],
    "omni_tiny": ["model.omni.preset=tiny"],
    "omni_mlp_phase1_bf16": ["model.omni.preset=tiny", "model.omni.vision_projector=mlp",
                             "model.omni.audio_projector=mlp", "phase=1", "training.precision=bf16"],
    "omni_phase2_no_distopt": ["model.omni.preset=tiny", "phase=2", "parallel.distributed_optimizer=false"],
    "qwen3_0.6b_shape_4_layers": ["model.preset=qwen3-0.6b", "model.num_layers=4", "model.vocab_size=32000"],
}


@pytest.fixture(scope="module", autouse=True)
def _megatron(megatron_single_rank):
    """One CPU rank with megatron's parallel state (tests/conftest.py)."""


def config(overrides):
    # precision=auto is fp32 on CPU: say it, since the planner reads auto as the GPU's bf16
    explicit = [] if any(o.startswith("training.precision") for o in overrides) else ["training.precision=fp32"]
    return load_config(None, ["data.seq_length=32", "training.micro_batch_size=1",
                              "training.global_batch_size=1", *explicit, *overrides])


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def optimizer_bytes(optimizer, bf16: bool) -> int:
    """Adam moments, plus the fp32 master copies the bf16 optimizer keeps."""
    total = 0
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        torch_opt = inner.optimizer
        total += tensor_bytes(v for state in torch_opt.state.values() for k, v in state.items() if k != "step")
        if bf16:
            total += tensor_bytes(p for group in torch_opt.param_groups for p in group["params"])
    return total


@pytest.mark.parametrize("overrides", CASES.values(), ids=CASES.keys())
def test_planner_counts_equal_the_built_model(overrides):
    cfg = config(overrides)
    torch.manual_seed(0)
    vocab = cfg.model.vocab_size or 151936
    (chunk,) = build_model(cfg, vocab, PLACEHOLDER_IDS)
    module = chunk.module.module if cfg.training.precision == "bf16" else chunk.module
    params = dict(module.named_parameters())
    groups: dict[str, int] = {}
    for name, group in parameter_groups(module).items():
        groups[group] = groups.get(group, 0) + params[name].numel()
    assert groups == rank_parameters(cfg, 0)

    optimizer, _ = build_optimizer(cfg, [chunk])
    optimizer.zero_grad()
    optimizer.step()  # Adam creates its moments on the first step
    count, weights, grads, opt = static_bytes(cfg, 0, dp=1)
    assert count == sum(p.numel() for p in params.values())
    assert weights == tensor_bytes(params.values())
    assert grads == tensor_bytes(p.main_grad for p in params.values() if p.requires_grad)
    assert opt == optimizer_bytes(optimizer, cfg.training.precision == "bf16")
