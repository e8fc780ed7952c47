"""Projectors: output shapes and compression ratios (16× image / 96× video for the 3D-Resampler at
the plan's token counts, 4× for Conv-GMLP), the MLP projector at TP=2 against a plain reference
(forward and gradients), the error messages, and one projector class per registry entry."""
import types

import pytest
import torch
import torch.nn.functional as F
from megatron.core import parallel_state as ps
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_omni.contract.projectors import AUDIO_PROJECTORS, VISION_PROJECTORS, projector_layouts
from megatron_omni.conversion.common import load_full_state_dict
from megatron_omni.models.projectors import projector_class
from megatron_omni.models.projectors.conv_gmlp import ConvGMLPProjector
from megatron_omni.models.projectors.mlp import MLPProjector
from megatron_omni.models.projectors.resampler import Resampler3D

from .multirank import run_ranks


def projector_config(**overrides) -> TransformerConfig:
    fields = dict(num_layers=1, hidden_size=40, num_attention_heads=4, use_cpu_initialization=True,
                  tensor_model_parallel_size=ps.get_tensor_model_parallel_world_size(),
                  gradient_accumulation_fusion=False)
    return TransformerConfig(**{**fields, **overrides})


def full_mlp_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"linear_fc1.weight": torch.randn(30, 23, generator=g) / 5,
            "linear_fc1.bias": torch.randn(30, generator=g),
            "linear_fc2.weight": torch.randn(40, 30, generator=g) / 5,
            "linear_fc2.bias": torch.randn(40, generator=g)}


def check_mlp_projector_matches_reference() -> None:
    """Forward and gradients of MLPProjector (this rank's TP) against F.linear on the full weights."""
    full = {k: v.requires_grad_() for k, v in full_mlp_state().items()}
    x = torch.randn(2, 7, 23, generator=torch.Generator().manual_seed(1))
    ref = F.linear(F.gelu(F.linear(x, full["linear_fc1.weight"], full["linear_fc1.bias"])),
                   full["linear_fc2.weight"], full["linear_fc2.bias"])
    ref.square().sum().backward()

    model = MLPProjector(projector_config(), input_size=23, hidden_size=30, output_size=40)
    load_full_state_dict(model, {k: v.detach() for k, v in full.items()})
    out = model(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    expected_grads = {"linear_fc1.weight": full["linear_fc1.weight"].grad.chunk(tp, 0)[rank],
                      "linear_fc1.bias": full["linear_fc1.bias"].grad.chunk(tp, 0)[rank],
                      "linear_fc2.weight": full["linear_fc2.weight"].grad.chunk(tp, 1)[rank],
                      "linear_fc2.bias": full["linear_fc2.bias"].grad}
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected_grads[name], atol=1e-4, rtol=1e-5, msg=name)


def test_mlp_projector_tp1():
    check_mlp_projector_matches_reference()


def test_mlp_projector_tp2():
    run_ranks(check_mlp_projector_matches_reference, 2)


def test_resampler_compression_at_plan_token_counts():
    """64 queries over SigLIP/14 at 448 px (32 × 32 = 1024 patches): 16× per image; packages of
    6 frames: 96× per package. Widths are tiny, token counts are the plan's."""
    torch.manual_seed(0)
    r = Resampler3D(num_queries=64, embed_dim=16, num_heads=2, kv_dim=12, output_size=20,
                    frames_per_package=6)
    image = r(torch.randn(2, 1024, 12))
    assert image.shape == (2, 64, 20) and 1024 // image.shape[1] == 16
    video = r(torch.randn(1, 12, 1024, 12))
    assert video.shape == (1, 2, 64, 20) and 12 * 1024 // (2 * 64) == 96


def test_resampler_packages_and_positions():
    torch.manual_seed(0)
    r = Resampler3D(num_queries=5, embed_dim=24, num_heads=3, kv_dim=10, output_size=14, frames_per_package=3)
    video = torch.randn(2, 7, 6, 10)  # 7 frames of a 2 × 3 grid -> packages of 3, 3, 1 frames
    with torch.no_grad():
        out = r(video, grid_hw=(2, 3))
        assert out.shape == (2, 3, 5, 14)
        for p, (a, b) in enumerate([(0, 3), (3, 6), (6, 7)]):  # the padded last package masks its padding
            torch.testing.assert_close(out[:, p], r(video[:, a:b], grid_hw=(2, 3))[:, 0], atol=1e-5, rtol=0)
        torch.testing.assert_close(r(video[:, 0], grid_hw=(2, 3)), r(video[:, :1], grid_hw=(2, 3))[:, 0])
        swapped = r(video[:, [1, 0, 2]], grid_hw=(2, 3))  # temporal embedding: frame order matters
        assert not torch.allclose(swapped, out[:, :1], atol=1e-4)
        transposed = r(video[:, :3], grid_hw=(3, 2))      # spatial embedding: the grid matters
        assert not torch.allclose(transposed, out[:, :1], atol=1e-4)


@pytest.mark.parametrize("length, expected", [(1, 1), (2, 1), (4, 1), (5, 2), (9, 3), (16, 4), (1500, 375)])
def test_conv_gmlp_downsamples_4x(length, expected):
    proj = ConvGMLPProjector(input_size=12, hidden_size=16, output_size=20)
    out = proj(torch.randn(2, length, 12))
    assert out.shape == (2, expected, 20) and ConvGMLPProjector.layouts[0].output_length(length) == expected


def test_bad_inputs_name_the_expected_shape():
    r = Resampler3D(num_queries=4, embed_dim=16, num_heads=2, kv_dim=12, output_size=20)
    with pytest.raises(ValueError, match=r"images \[b, N, 12\] or video \[b, T, N, 12\]; got \(2, 9, 8\)"):
        r(torch.randn(2, 9, 8))
    with pytest.raises(ValueError, match=r"10 tokens per frame do not form a grid \(3, 3\)"):
        r(torch.randn(2, 10, 12))
    with pytest.raises(ValueError, match="divisible by 4"):
        Resampler3D(num_queries=4, embed_dim=18, num_heads=2, kv_dim=12, output_size=20)
    with pytest.raises(ValueError, match=r"features \[b, L, 12\] with L ≥ 1; got \(2, 12\)"):
        ConvGMLPProjector(12, 16, 20)(torch.randn(2, 12))
    mlp = MLPProjector(projector_config(), input_size=23, hidden_size=30, output_size=40)
    with pytest.raises(ValueError, match=r"features \[..., 23\]; got \(2, 5, 24\)"):
        mlp(torch.randn(2, 5, 24))
    with pytest.raises(ValueError, match="sequence_parallel=False"):
        MLPProjector(projector_config(sequence_parallel=True, tensor_model_parallel_size=2),
                     input_size=23, hidden_size=30, output_size=40)


def test_every_registry_entry_has_its_projector_class():
    for layout in [*VISION_PROJECTORS.values(), *AUDIO_PROJECTORS.values()]:
        assert layout in projector_class(layout).layouts, layout
    assert [projector_class(x) for x in projector_layouts(types.SimpleNamespace(
        vision_projector="resampler", audio_projector="conv_gmlp"))] == [Resampler3D, ConvGMLPProjector]
    with pytest.raises(ValueError, match=r"model.omni.audio_projector='conv'; use one of \['conv_gmlp', 'mlp'\]"):
        projector_layouts(types.SimpleNamespace(vision_projector="mlp", audio_projector="conv"))
