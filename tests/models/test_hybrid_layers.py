"""Hybrid attention layers (model.layer_pattern): the sparse layer equals dense attention when its
top-k covers every block, an all-dense pattern is the foundation model, the Lightning layer equals
a plain PyTorch re-implementation (forward and every gradient), packed samples equal the samples
run alone, the Triton and PyTorch kernels give the same layer, and the config checks name the
field. The layers run the ops model.kernels=auto picks (the PyTorch ones on CPU); sizes are tiny
for the one test that runs Triton (interpreted on CPU).
Megatron's parallel state (one process, TP=1) comes from tests/models/conftest.py."""
import dataclasses

import pytest
import torch
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.spec_utils import build_module
from omni_kernels.lightning import lightning_attn_naive, minimax_slopes

from megatron_omni.config import ConfigError, load_config, validate
from megatron_omni.config.schema import ModelConfig
from megatron_omni.models.llm.model import build_llm, transformer_config
from megatron_omni.models.llm.spec import dense_layer_spec, linear_layer_spec, sparse_layer_spec

SMALL_SPARSE = ["model.sparse.dense_len=32", "model.sparse.block_size=16",
                "model.sparse.kernel_size=16", "model.sparse.kernel_stride=8",
                "model.sparse.init_blocks=1", "model.sparse.local_blocks=1", "model.sparse.topk=1"]
"""16-token blocks; samples of 32 tokens or more attend sparsely to 3 blocks per query block."""


def omni_config(*overrides: str):
    return load_config(None, ["model.backend=local", "training.precision=fp32", *SMALL_SPARSE,
                              "model.linear.chunk_size=16", *overrides])


def seed(value: int = 1) -> None:
    from megatron.core import tensor_parallel

    torch.manual_seed(value)
    tensor_parallel.model_parallel_cuda_manual_seed(value)


def build_attention(layer_spec, cfg, value: int = 1):
    """The self_attention module of a layer spec, alone, with random (non-unit) norm weights."""
    seed(value)
    module = build_module(layer_spec.submodules.self_attention, config=transformer_config(cfg),
                          layer_number=1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return module


def rope_freqs(cfg, length: int) -> torch.Tensor:
    """The rotary table GPTModel hands its layers: [length, 1, 1, head_dim]."""
    rotary = RotaryEmbedding(kv_channels=cfg.model.head_dim, rotary_percent=1.0,
                             rotary_base=cfg.model.rope_theta)
    return rotary(length)


def packed(cu: list[int]) -> PackedSeqParams:
    cu_t = torch.tensor(cu, dtype=torch.int32)
    longest = max(b - a for a, b in zip(cu, cu[1:]))
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu_t, cu_seqlens_kv=cu_t,
                           max_seqlen_q=longest, max_seqlen_kv=longest)


def assert_close(name: str, ref: torch.Tensor, got: torch.Tensor, ratio: float = 1e-5) -> None:
    """Relative RMSE of got against ref."""
    err = (ref.double() - got.double()).pow(2).mean().sqrt()
    scale = ref.double().pow(2).mean().sqrt().clamp_min(1e-12)
    assert err / scale <= ratio, f"{name}: relative RMSE {float(err / scale):.3g} > {ratio}"


def forward_backward(module, x: torch.Tensor, **kwargs):
    """Output, and the gradients of a fixed random projection of it w.r.t. x and parameters."""
    x = x.detach().requires_grad_()
    module.zero_grad()
    out, _ = module(x, None, **kwargs)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    (out * weight).sum().backward()
    grads = {"x": x.grad, **{n: p.grad for n, p in module.named_parameters()}}
    return out.detach(), grads


# ----------------------------------------------------------------------------- sparse


def test_sparse_with_all_blocks_equals_dense_nope():
    """64 tokens = 4 blocks; topk 4 selects every block, so InfLLM-V2 is full causal attention.
    The sparse layer takes the dense layer's state dict as is (no gate) and ignores RoPE."""
    cfg = omni_config("model.sparse.topk=4", "model.sparse.output_gate=false")
    dense = build_attention(dense_layer_spec("local"), cfg)
    sparse = build_attention(sparse_layer_spec(cfg.model.sparse), cfg, value=2)
    sparse.load_state_dict(dense.state_dict(), strict=True)
    x = torch.randn(64, 2, cfg.model.hidden_size)
    ref, ref_grads = forward_backward(dense, x)  # no rotary_pos_emb: NoPE
    out, grads = forward_backward(sparse, x, rotary_pos_emb=rope_freqs(cfg, 64))
    assert_close("output", ref, out)
    assert ref_grads.keys() == grads.keys()
    for name in ref_grads:
        assert_close(name, ref_grads[name], grads[name])
    sparse.core_attention.settings = dataclasses.replace(cfg.model.sparse, topk=0)
    with torch.no_grad():
        fewer, _ = sparse(x, None)
    assert (fewer - ref).abs().max() > 1e-3, "topk=0 should drop blocks from the last queries"


def test_sparse_packed_equals_samples_alone():
    """A sparse 80-token sample (5 blocks, 3 attended) packed with a dense 24-token one; no
    gradient crosses the boundary."""
    cfg = omni_config()
    layer = build_attention(sparse_layer_spec(cfg.model.sparse), cfg)
    cu = [0, 80, 104]
    x = torch.randn(104, 1, cfg.model.hidden_size, requires_grad=True)
    out, _ = layer(x, None, packed_seq_params=packed(cu))
    with torch.no_grad():
        for a, b in zip(cu, cu[1:]):
            alone, _ = layer(x[a:b], None)
            assert_close(f"sample {a}:{b}", alone, out[a:b])
    out[80:].sum().backward()
    assert x.grad[:80].abs().max() == 0 and x.grad[80:].abs().max() > 0


# ----------------------------------------------------------------------------- linear


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Non-interleaved RoPE (Qwen3/HF) on x [s, b, h, d] at positions [s]."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = positions.double()[:, None] * inv_freq  # [s, d/2]
    cos = torch.cat([angles.cos(), angles.cos()], -1)[:, None, None, :]
    sin = torch.cat([angles.sin(), angles.sin()], -1)[:, None, None, :]
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat([-x2, x1], -1) * sin).to(x.dtype)


def naive_lightning_layer(layer, x: torch.Tensor, cfg, slopes: torch.Tensor) -> torch.Tensor:
    """The Lightning layer spelled out from its weights: QK-norm, RoPE, the token recurrence,
    RMSNorm over heads·d, sigmoid gate, output projection."""
    m = cfg.model
    s, b, _ = x.shape
    heads, d, groups = m.num_attention_heads, m.head_dim, m.linear.num_query_groups
    per_group = heads // groups
    mixed = (x @ layer.linear_qkv.weight.T).view(s, b, groups, per_group + 2, d)
    q = mixed[:, :, :, :per_group].reshape(s, b, heads, d)
    k, v = mixed[:, :, :, per_group], mixed[:, :, :, per_group + 1]
    q = _rms(q, layer.q_layernorm.weight, m.norm_eps)
    k = _rms(k, layer.k_layernorm.weight, m.norm_eps)
    positions = torch.arange(s)
    q, k = _rope(q, positions, m.rope_theta), _rope(k, positions, m.rope_theta)
    k, v = k.repeat_interleave(per_group, dim=2), v.repeat_interleave(per_group, dim=2)
    o, _ = lightning_attn_naive(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), slopes,
                                scale=d ** -0.5)
    o = _rms(o.transpose(0, 1).reshape(s, b, heads * d), layer.out_norm.weight, m.norm_eps)
    o = o * torch.sigmoid(x @ layer.linear_gate.weight.T)
    return o @ layer.linear_proj.weight.T


def test_linear_equals_naive_layer():
    """GQA (2 K/V heads for 4 query heads), MiniMax slopes of linear layer 1 of 3, gate on;
    41 tokens in chunks of 16 (a short last chunk)."""
    cfg = omni_config("model.linear.num_query_groups=2", "model.linear.slopes=minimax")
    layer = build_attention(linear_layer_spec(cfg.model.linear, 1, 3), cfg)
    slopes = minimax_slopes(cfg.model.num_attention_heads, 1, 3)
    torch.testing.assert_close(layer.core_attention.slopes, slopes)
    x = torch.randn(41, 2, cfg.model.hidden_size)
    out, grads = forward_backward(layer, x, rotary_pos_emb=rope_freqs(cfg, 41))

    class Naive(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x, mask):
            return naive_lightning_layer(self.layer, x, cfg, slopes), None

    ref, ref_grads = forward_backward(Naive(), x)
    assert_close("output", ref, out)
    for name, grad in grads.items():
        assert_close(name, ref_grads[name if name == "x" else f"layer.{name}"], grad)


def test_linear_packed_equals_samples_alone():
    """Samples of 37 and 27 tokens: RoPE positions and the decay state restart at the boundary,
    and no gradient crosses it."""
    cfg = omni_config()
    layer = build_attention(linear_layer_spec(cfg.model.linear), cfg)
    cu = [0, 37, 64]
    x = torch.randn(64, 1, cfg.model.hidden_size, requires_grad=True)
    out, _ = layer(x, None, rotary_pos_emb=rope_freqs(cfg, 37), packed_seq_params=packed(cu))
    with torch.no_grad():
        for a, b in zip(cu, cu[1:]):
            alone, _ = layer(x[a:b], None, rotary_pos_emb=rope_freqs(cfg, b - a))
            assert_close(f"sample {a}:{b}", alone, out[a:b])
    out[37:].sum().backward()
    assert x.grad[:37].abs().max() == 0 and x.grad[37:].abs().max() > 0


def test_linear_selective_recompute_keeps_gradients():
    """training.recompute=selective re-runs the core attention in backward: same gradients."""
    cfg = omni_config("training.recompute=selective")
    layer = build_attention(linear_layer_spec(cfg.model.linear), cfg)
    assert layer.checkpoint_core_attention
    x = torch.randn(20, 1, cfg.model.hidden_size)
    freqs = rope_freqs(cfg, 20)
    out, grads = forward_backward(layer, x, rotary_pos_emb=freqs)
    layer.checkpoint_core_attention = False
    ref, ref_grads = forward_backward(layer, x, rotary_pos_emb=freqs)
    assert torch.equal(ref, out)
    for name, grad in grads.items():
        assert torch.equal(ref_grads[name], grad), name


# ----------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("letter", ["S", "L"])
def test_triton_and_torch_kernels_give_the_same_layer(letter):
    """model.kernels=triton (the interpreter on CPU) and torch run one code path above the kernel
    call: the same packed layer (a sparse 80-token sample beside a dense 24-token one; GQA and the
    output gate on) gives the same output and gradients."""
    cfg = omni_config("model.linear.num_query_groups=2")
    x = torch.randn(104, 1, cfg.model.hidden_size)
    results = {}
    for kernels in ("triton", "torch"):
        spec = (sparse_layer_spec(cfg.model.sparse, kernels) if letter == "S"
                else linear_layer_spec(cfg.model.linear, kernels=kernels))
        layer = build_attention(spec, cfg)
        assert layer.core_attention.ops.name == kernels
        results[kernels] = forward_backward(layer, x, rotary_pos_emb=rope_freqs(cfg, 104),
                                            packed_seq_params=packed([0, 80, 104]))
    (ref, ref_grads), (out, grads) = results["triton"], results["torch"]
    assert_close("output", ref, out)
    assert ref_grads.keys() == grads.keys()
    for name in ref_grads:
        assert_close(name, ref_grads[name], grads[name])


# ----------------------------------------------------------------------------- model


def test_all_dense_pattern_is_the_foundation_model():
    plain = omni_config()
    dense = omni_config("model.layer_pattern=DDDD")
    seed(3)
    ref = build_llm(plain, 100).eval()
    seed(3)
    got = build_llm(dense, 100).eval()
    ref_state, got_state = ref.state_dict(), got.state_dict()
    assert ref_state.keys() == got_state.keys()
    for key, value in ref_state.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, got_state[key]), key
    tokens = torch.randint(0, 100, (2, 24))
    positions = torch.arange(24).expand(2, 24)
    with torch.no_grad():
        assert torch.equal(ref(tokens, positions, None), got(tokens, positions, None))


def test_hybrid_model_layers_and_parameter_names():
    """'hybrid' is SALA-like; S/L layers keep the dense parameter names, adding only the gate
    (and the Lightning output norm); the linear layers' minimax slopes follow their order."""
    assert ModelConfig(num_layers=8, layer_pattern="hybrid").layer_types() == "SLLLSLLS"
    assert ModelConfig(num_layers=2, layer_pattern="hybrid").layer_types() == "SS"
    cfg = omni_config("model.layer_pattern=SLDL", "model.linear.slopes=minimax")
    seed(1)
    model = build_llm(cfg, 100)
    names = {n.split("self_attention.")[1] for n, _ in model.named_parameters()
             if ".layers.2.self_attention." in n}
    for i, extra in enumerate([{"linear_gate.weight"}, {"linear_gate.weight", "out_norm.weight"},
                               set(), {"linear_gate.weight", "out_norm.weight"}]):
        got = {n.split("self_attention.")[1] for n, _ in model.named_parameters()
               if f".layers.{i}.self_attention." in n}
        assert got == names | extra, i
    sharded = model.sharded_state_dict()  # hybrid layers are checkpointed one key per layer
    assert sharded["decoder.layers.1.self_attention.out_norm.weight"].global_shape == (64,)
    assert sharded["decoder.layers.2.self_attention.linear_qkv.weight"].global_shape == (128, 64)
    layers = model.decoder.layers
    torch.testing.assert_close(layers[1].self_attention.core_attention.slopes, minimax_slopes(4, 0, 2))
    torch.testing.assert_close(layers[3].self_attention.core_attention.slopes, minimax_slopes(4, 1, 2))


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("overrides, message", [
    (["model.layer_pattern=SLX"], "model.layer_pattern='SLX' has letters ['X']"),
    (["model.layer_pattern=SLS"], "model.layer_pattern='SLS' has 3 letters but model.num_layers=4"),
    (["model.layer_pattern=SLLS", "model.sparse.block_size=48"], "model.sparse.block_size=48"),
    (["model.layer_pattern=SLLS", "model.sparse.kernel_stride=32", "model.sparse.kernel_size=32"],
     "model.sparse.block_size=16 must be a multiple of model.sparse.kernel_stride=32"),
    (["model.layer_pattern=SLLS", "model.sparse.local_blocks=0"], "model.sparse.local_blocks=0"),
    (["model.layer_pattern=SLLS", "model.linear.slopes=cosine"], "model.linear.slopes='cosine'"),
    (["model.layer_pattern=SLLS", "model.linear.num_query_groups=3"],
     "model.linear.num_query_groups=3 must divide model.num_attention_heads=4"),
    (["model.layer_pattern=SLLS", "parallel.tp=2", "model.linear.num_query_groups=1"],
     "be divisible by parallel.tp=2"),
    (["model.layer_pattern=SLLS", "parallel.cp=2", "data.seq_length=96"],
     "sparse (S) layers need seq_length / (2*cp) to be a multiple of model.sparse.block_size=16"),
])
def test_config_errors_name_the_field(overrides, message):
    cfg = omni_config(*overrides)
    with pytest.raises(ConfigError) as err:
        validate(cfg, world_size=4)
    assert message in str(err.value)


def test_config_accepts_hybrid_and_ignores_unused_sections():
    validate(omni_config("model.layer_pattern=hybrid", "parallel.tp=2"), world_size=2)
    validate(omni_config("model.sparse.block_size=48", "model.linear.slopes=x"), world_size=1)
