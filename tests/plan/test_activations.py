"""The planner's per-layer activation estimate of the local-module layers (D on the local
backend, S, L) against what the built layer really saves for backward on CPU: every tensor
autograd keeps (saved_tensors_hooks), each storage counted once, the weights left out. The S/L
layers run the Triton kernels (in the interpreter here), as on the GPUs the planner plans for:
the CPU torch ops (model.kernels=torch) save more."""
import pytest
import torch

from megatron_omni.config import load_config
from megatron_omni.models.llm.model import build_llm
from megatron_omni.plan.memory import layer_activation_bytes

SHAPE = ["model.hidden_size=256", "model.num_attention_heads=4", "model.num_query_groups=2",
         "model.head_dim=64", "model.ffn_hidden_size=768", "data.seq_length=256",
         "training.micro_batch_size=2", "training.precision=fp32", "model.vocab_size=512",
         "model.backend=local", "model.kernels=triton"]
CASES = {"dense": ["model.layer_pattern=DDDD"], "sparse_linear": ["model.layer_pattern=SLLS"],
         "ungated": ["model.layer_pattern=SLLS", "model.sparse.output_gate=false",
                     "model.linear.output_gate=false"]}


@pytest.fixture(scope="module", autouse=True)
def _megatron(megatron_single_rank):
    """One CPU rank with megatron's parallel state (tests/conftest.py)."""


def saved_bytes(layer, rope, tokens: int, hidden: int) -> int:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randn(tokens, 2, hidden, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x, attention_mask=None, rotary_pos_emb=rope)
    weights = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    return sum(n for ptr, n in storages.items() if ptr not in weights)


@pytest.mark.parametrize("overrides", CASES.values(), ids=CASES.keys())
def test_layer_activations_within_5_percent(overrides):
    cfg = load_config(None, SHAPE + overrides)
    torch.manual_seed(0)
    model = build_llm(cfg, 512)
    rope = model.rotary_pos_emb(cfg.data.seq_length)
    for letter, layer in zip(cfg.model.layer_types(), model.decoder.layers):
        got = saved_bytes(layer, rope, cfg.data.seq_length, cfg.model.hidden_size)
        assert got == pytest.approx(layer_activation_bytes(cfg, letter), rel=0.05), letter
