"""RoPE long-context scaling (model.rope_scaling, model.rope_scaling_factor): the rotary angles
the model hands its layers are position / s · θ^(−2i/d) (linear) or position · θ'^(−2i/d) with
θ' = θ · s^(d/(d−2)) (NTK-aware); bad values are refused; HF export carries NTK as its base."""
import pytest
import torch

from megatron_omni.config import ConfigError, load_config, validate
from megatron_omni.conversion.qwen3 import hf_config
from megatron_omni.models.llm.model import build_llm

THETA, D, S = 10000.0, 16, 8.0


def _angles(*overrides: str) -> torch.Tensor:
    """[positions, d/2] rotation angles of the built model (megatron's [s, 1, 1, d] table holds
    them twice)."""
    cfg = load_config(None, ["model.backend=local", "training.precision=fp32",
                             f"model.rope_theta={THETA}", f"model.head_dim={D}", *overrides])
    table = build_llm(cfg, 100).rotary_pos_emb(12)[:, 0, 0]
    assert torch.equal(table[:, :D // 2], table[:, D // 2:])
    return table[:, :D // 2].double()


def _expected(positions_scale: float, base: float) -> torch.Tensor:
    inv = 1.0 / base ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    return (torch.arange(12, dtype=torch.float64) * positions_scale)[:, None] * inv[None]


def test_linear_and_ntk_frequencies():
    torch.testing.assert_close(_angles(), _expected(1.0, THETA), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(_angles(f"model.rope_scaling_factor={S}"), _expected(1 / S, THETA),
                               rtol=1e-6, atol=1e-6)
    ntk_base = THETA * S ** (D / (D - 2))
    ntk = _angles("model.rope_scaling=ntk", f"model.rope_scaling_factor={S}")
    torch.testing.assert_close(ntk, _expected(1.0, ntk_base), rtol=1e-6, atol=1e-6)
    # NTK keeps the highest frequency and slows the lowest exactly s-fold (linear: all s-fold)
    torch.testing.assert_close(ntk[:, 0], _expected(1.0, THETA)[:, 0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ntk[:, -1], _expected(1.0, THETA)[:, -1] / S, rtol=1e-5, atol=1e-7)


def test_bad_rope_scaling_is_refused():
    with pytest.raises(ConfigError, match="model.rope_scaling='yarn'; use linear or ntk"):
        validate(load_config(None, ["model.rope_scaling=yarn"]), 1)
    with pytest.raises(ConfigError, match="model.rope_scaling_factor=0.5 must be >= 1"):
        validate(load_config(None, ["model.rope_scaling=ntk", "model.rope_scaling_factor=0.5"]), 1)


def test_hf_export_maps_ntk_onto_its_base():
    ntk = load_config(None, [f"model.rope_theta={THETA}", f"model.head_dim={D}",
                             "model.rope_scaling=ntk", f"model.rope_scaling_factor={S}"]).model
    rope = hf_config(ntk, 100, torch.float32).rope_parameters
    assert rope["rope_type"] == "default"
    assert rope["rope_theta"] == pytest.approx(THETA * S ** (D / (D - 2)), rel=1e-12)
    linear = load_config(None, [f"model.rope_scaling_factor={S}"]).model
    assert hf_config(linear, 100, torch.float32).rope_parameters["factor"] == S
