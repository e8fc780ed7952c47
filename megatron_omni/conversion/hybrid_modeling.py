"""Hybrid decoder (dense / InfLLM-V2 sparse / Lightning linear layers) for Hugging Face transformers.

This file is copied verbatim into every exported hybrid folder as ``modeling_omni_hybrid.py``
(megatron_omni/conversion/hybrid_export.py) and loaded with ``trust_remote_code=True``: it imports
only torch and transformers, never megatron_omni. Plain PyTorch, float32 accumulation:

    layer   = x + attn(norm(x));  layer + mlp(norm(layer))         pre-norm, SwiGLU MLP
    D dense   GQA softmax attention, QK RMSNorm per head, RoPE        (as Qwen3)
    S sparse  InfLLM-V2: QK norm, NoPE; dense causal below sparse.dense_len keys, else each query
              block of block_size tokens attends init + local + top-k key blocks chosen from
              mean-pooled keys; optional sigmoid output gate
    L linear  Lightning: QK norm, RoPE, S_t = exp(-s_h) S_{t-1} + k_t^T v_t, o_t = q_t S_t / sqrt(d)
              (chunked), RMSNorm over heads*head_dim, optional sigmoid output gate

The block choice of a sparse layer is per query block and sums the scores of every token of the
block, so a position's output depends on the later tokens of its own block: generation
recomputes the whole sequence at every step (no KV cache), which gives each new token exactly
the logits of a forward pass over the prefix.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

SPARSE_DEFAULTS = dict(dense_len=8192, block_size=64, topk=64, init_blocks=1, local_blocks=32,
                       kernel_size=32, kernel_stride=16, lse_kernel_size=128, lse_kernel_stride=64,
                       output_gate=True)
LINEAR_DEFAULTS = dict(num_key_value_heads=None, slopes="alibi", output_gate=True, chunk_size=64)


class OmniHybridConfig(PretrainedConfig):
    """Shapes of the hybrid decoder; ``layer_pattern`` has one of D, S, L per layer, ``sparse``
    and ``linear`` hold the S and L layers' settings (keys as SPARSE_DEFAULTS, LINEAR_DEFAULTS).
    ``rope_base`` is the RoPE base as applied; ``rope_interpolation`` divides positions (1 =
    none)."""

    model_type = "omni_hybrid"

    def __init__(self, vocab_size=384, hidden_size=64, intermediate_size=192, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, layer_pattern="DSLD",
                 rms_norm_eps=1e-6, rope_base=1e6, rope_interpolation=1.0,
                 max_position_embeddings=4096, initializer_range=0.02, sparse=None, linear=None,
                 tie_word_embeddings=True, **kwargs):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.intermediate_size, self.num_hidden_layers = intermediate_size, num_hidden_layers
        self.num_attention_heads, self.num_key_value_heads = num_attention_heads, num_key_value_heads
        self.head_dim, self.layer_pattern, self.rms_norm_eps = head_dim, layer_pattern, rms_norm_eps
        self.rope_base, self.rope_interpolation = rope_base, rope_interpolation
        self.max_position_embeddings, self.initializer_range = max_position_embeddings, initializer_range
        self.sparse = {**SPARSE_DEFAULTS, **(sparse or {})}
        self.linear = {**LINEAR_DEFAULTS, **(linear or {})}
        kwargs.setdefault("use_cache", False)
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps), normalised in float32."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotate(x, cos, sin):
    """RoPE on x [b, heads, t, d] (halves rotated, not interleaved); cos/sin [b, t, d]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def rope_tables(config, position_ids, dtype):
    """cos, sin [b, t, head_dim] for integer positions [b, t]."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_base ** (torch.arange(0, d, 2, dtype=torch.float32,
                                                         device=position_ids.device) / d))
    freqs = (position_ids.float() / config.rope_interpolation)[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def alibi_slopes(num_heads: int):
    return [2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)]


def decay_slopes(settings: dict, num_heads: int, index: int, count: int) -> torch.Tensor:
    """Per-head decay slopes of linear layer `index` of `count`: alibi, or minimax (alibi scaled
    by 1 - index / (count - 1) + 1e-5)."""
    slopes = alibi_slopes(num_heads)
    if settings["slopes"] == "minimax":
        depth = index / (count - 1) if count > 1 else 0.0
        slopes = [s * (1.0 - depth + 1e-5) for s in slopes]
    elif settings["slopes"] != "alibi":
        raise ValueError(f"linear.slopes={settings['slopes']!r}: alibi or minimax")
    return torch.tensor(slopes, dtype=torch.float32)


def lightning_attention(q, k, v, slopes, chunk: int):
    """Causal Lightning attention, chunked, float32: q, k, v [b, heads, t, d] -> [b, heads, t, d].

    Inside a chunk the masked-decay product; across chunks the carried state
    S [b, heads, d, d] (S <- lambda^C S + sum_j lambda^(C-1-j) k_j^T v_j)."""
    b, h, t, d = q.shape
    q, k, v = q.float() * d ** -0.5, k.float(), v.float()
    s = slopes.to(q.device)[None, :, None]  # [1, h, 1]
    state = q.new_zeros(b, h, d, v.shape[-1])
    outs = []
    for start in range(0, t, chunk):
        qc, kc, vc = (x[:, :, start:start + chunk] for x in (q, k, v))
        n = qc.shape[2]
        i = torch.arange(n, device=q.device, dtype=torch.float32)
        diff = i[:, None] - i[None, :]
        decay = torch.where(diff >= 0, torch.exp(-s[..., None] * diff.clamp(min=0)), 0.0)  # [1,h,n,n]
        intra = ((qc @ kc.transpose(-1, -2)) * decay) @ vc
        inter = (qc * torch.exp(-s * (i + 1))[..., None]) @ state
        outs.append(intra + inter)
        to_end = torch.exp(-s * (n - 1 - i))[..., None]  # [1, h, n, 1]
        state = torch.exp(-s * n)[..., None] * state + (kc * to_end).transpose(-1, -2) @ vc
    return torch.cat(outs, dim=2)


def pool_keys(k, size: int, stride: int):
    """Mean over full windows [c*stride, c*stride + size): k [b, hkv, t, d] -> [b, hkv, C, d]."""
    t = k.shape[2]
    if t < size:
        return k.new_zeros(*k.shape[:2], 0, k.shape[-1])
    return k.float().unfold(2, size, stride).mean(-1)


QUERY_CHUNK_BLOCKS = 16
"""Query blocks a sparse layer scores and attends at a time (memory ~ chunk x sequence)."""


def select_blocks(q, k, st: dict, first_block: int = 0):
    """Key blocks each query block attends: bool [b, hkv, NQB, NKB] (query block, key block).

    q [b, hq, tq, d] holds positions [first_block * block_size, ... + tq), k [b, hkv, tk, d] the
    keys [0, tk) up to the last query. Token t scores window c (visible when it ends at or
    before t) by exp(q_t . K1_c * scale - lse_t), lse_t the logsumexp of q_t against the coarser
    visible K2 windows (no K2 window yet: the token adds nothing); summed over the query heads of
    a group and the tokens of the query block. A key block scores the max of the windows
    overlapping it; the first init_blocks and the local_blocks most recent are forced, top-k of
    the rest by score (ties to the lower block), never a block after the query block."""
    b, hq, tq, d = q.shape
    hkv, tk, bs = k.shape[1], k.shape[2], st["block_size"]
    scale = d ** -0.5
    q = q.float().view(b, hkv, hq // hkv, tq, d)
    pos = first_block * bs + torch.arange(tq, device=q.device)
    k1 = pool_keys(k, st["kernel_size"], st["kernel_stride"])
    k2 = pool_keys(k, st["lse_kernel_size"], st["lse_kernel_stride"])
    end1 = torch.arange(k1.shape[2], device=q.device) * st["kernel_stride"] + st["kernel_size"] - 1
    end2 = torch.arange(k2.shape[2], device=q.device) * st["lse_kernel_stride"] + st["lse_kernel_size"] - 1
    s2 = torch.einsum("bhgtd,bhcd->bhgtc", q, k2) * scale
    lse = s2.masked_fill(end2 > pos[:, None], float("-inf")).logsumexp(-1, keepdim=True)
    lse = torch.where(torch.isfinite(lse), lse, float("inf"))
    s1 = torch.exp(torch.einsum("bhgtd,bhcd->bhgtc", q, k1) * scale - lse)
    s1 = s1.masked_fill(end1 > pos[:, None], 0.0).sum(2)  # [b, hkv, tq, C1]
    nqb, nkb = -(-tq // bs), -(-tk // bs)
    s1 = F.pad(s1, (0, 0, 0, nqb * bs - tq)).view(b, hkv, nqb, bs, -1).sum(3)  # [b, hkv, NQB, C1]
    pool_s = bs // st["kernel_stride"]
    pool_pad = st["kernel_size"] // st["kernel_stride"] - 1
    # key block j takes the max over windows [j*pool_s - pool_pad, (j+1)*pool_s) (zero outside)
    s1 = F.pad(s1, (pool_pad, max(0, nkb * pool_s - s1.shape[-1])))
    score = s1.unfold(-1, pool_s + pool_pad, pool_s)[..., :nkb, :].amax(-1)  # [b, hkv, NQB, NKB]
    qb = first_block + torch.arange(nqb, device=q.device)[:, None]
    kb = torch.arange(nkb, device=q.device)[None, :]
    forced = (kb < st["init_blocks"]) | (kb > qb - st["local_blocks"])
    score = torch.where(kb > qb, float("-inf"), torch.where(forced, float("inf"), score))
    slots = st["init_blocks"] + st["local_blocks"] + st["topk"]
    ranked, order = torch.sort(score, dim=-1, descending=True, stable=True)
    chosen = torch.zeros_like(score, dtype=torch.bool)
    chosen.scatter_(-1, order[..., :slots], ranked[..., :slots] > float("-inf"))
    return chosen


def infllmv2_attention(q, k, v, st: dict):
    """InfLLM-V2 attention, q [b, hq, t, d], k/v [b, hkv, t, d] -> [b, hq, t, d]: dense causal
    below dense_len keys, else causal attention restricted to the selected blocks, computed
    QUERY_CHUNK_BLOCKS query blocks at a time."""
    t, group = q.shape[2], q.shape[1] // k.shape[1]
    if t < st["dense_len"]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=group > 1)
    bs = st["block_size"]
    kk, vv = (x.repeat_interleave(group, dim=1).float() for x in (k, v))
    outs = []
    for start in range(0, t, QUERY_CHUNK_BLOCKS * bs):
        qc = q[:, :, start:start + QUERY_CHUNK_BLOCKS * bs]
        end = start + qc.shape[2]
        chosen = select_blocks(qc, k[:, :, :end], st, start // bs)  # [b, hkv, NQB, NKB]
        pos_q, pos_k = torch.arange(start, end, device=q.device), torch.arange(end, device=q.device)
        allowed = chosen[:, :, pos_q // bs - start // bs][..., pos_k // bs]  # [b, hkv, tq, end]
        allowed = (allowed & (pos_k <= pos_q[:, None])).repeat_interleave(group, dim=1)
        scores = (qc.float() @ kk[:, :, :end].transpose(-1, -2)) * q.shape[-1] ** -0.5
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        outs.append(probs @ vv[:, :, :end])
    return torch.cat(outs, dim=2).to(q.dtype)


class HybridAttention(nn.Module):
    """One layer's attention; ``kind`` is its pattern letter (D, S or L)."""

    def __init__(self, config: OmniHybridConfig, kind: str, linear_index: int, num_linear: int):
        super().__init__()
        self.kind, self.config = kind, config
        h, nh, d = config.hidden_size, config.num_attention_heads, config.head_dim
        self.num_kv = config.num_key_value_heads
        if kind == "L":
            self.num_kv = config.linear["num_key_value_heads"] or nh
        self.q_proj = nn.Linear(h, nh * d, bias=False)
        self.k_proj = nn.Linear(h, self.num_kv * d, bias=False)
        self.v_proj = nn.Linear(h, self.num_kv * d, bias=False)
        self.o_proj = nn.Linear(nh * d, h, bias=False)
        self.q_norm = RMSNorm(d, config.rms_norm_eps)
        self.k_norm = RMSNorm(d, config.rms_norm_eps)
        gated = {"S": config.sparse["output_gate"], "L": config.linear["output_gate"]}.get(kind, False)
        self.g_proj = nn.Linear(h, nh * d, bias=False) if gated else None
        self.out_norm = RMSNorm(nh * d, config.rms_norm_eps) if kind == "L" else None
        self.linear_layer = (linear_index, num_linear)  # slopes are made in forward: no buffer
        # (from_pretrained builds modules on the meta device and loads only stored tensors)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        d = self.config.head_dim
        q = self.q_norm(self.q_proj(x).view(b, t, -1, d)).transpose(1, 2)  # [b, heads, t, d]
        k = self.k_norm(self.k_proj(x).view(b, t, -1, d)).transpose(1, 2)
        v = self.v_proj(x).view(b, t, -1, d).transpose(1, 2)
        if self.kind != "S":  # HyPE: sparse layers are NoPE
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if self.kind == "D":
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               enable_gqa=q.shape[1] != k.shape[1])
        elif self.kind == "S":
            o = infllmv2_attention(q, k, v, self.config.sparse)
        else:
            group = q.shape[1] // k.shape[1]
            k, v = (y.repeat_interleave(group, dim=1) for y in (k, v))
            slopes = decay_slopes(self.config.linear, q.shape[1], *self.linear_layer)
            o = lightning_attention(q, k, v, slopes, self.config.linear["chunk_size"]).to(x.dtype)
        o = o.transpose(1, 2).reshape(b, t, -1)
        if self.out_norm is not None:
            o = self.out_norm(o)
        if self.g_proj is not None:
            o = (o.float() * torch.sigmoid(self.g_proj(x).float())).to(o.dtype)
        return self.o_proj(o)


class MLP(nn.Module):
    def __init__(self, config: OmniHybridConfig):
        super().__init__()
        h, f = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(h, f, bias=False)
        self.up_proj = nn.Linear(h, f, bias=False)
        self.down_proj = nn.Linear(f, h, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: OmniHybridConfig, kind: str, linear_index: int, num_linear: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = HybridAttention(config, kind, linear_index, num_linear)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class OmniHybridPreTrainedModel(PreTrainedModel):
    config_class = OmniHybridConfig
    base_model_prefix = "model"
    _no_split_modules = ["DecoderLayer"]

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, self.config.initializer_range)
        elif isinstance(module, RMSNorm):
            module.weight.data.fill_(1.0)


class OmniHybridModel(OmniHybridPreTrainedModel):
    def __init__(self, config: OmniHybridConfig):
        super().__init__(config)
        pattern = config.layer_pattern
        if len(pattern) != config.num_hidden_layers or set(pattern) - set("DSL"):
            raise ValueError(f"layer_pattern={pattern!r}: one of D, S, L for each of the "
                             f"{config.num_hidden_layers} layers")
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, kind, pattern[:i].count("L"), pattern.count("L"))
            for i, kind in enumerate(pattern))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def forward(self, input_ids, position_ids=None):
        x = self.embed_tokens(input_ids)
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        cos, sin = rope_tables(self.config, position_ids, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)


class OmniHybridForCausalLM(OmniHybridPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: OmniHybridConfig):
        super().__init__(config)
        self.model = OmniHybridModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        """Recompute the whole sequence at every step (no KV cache; module docstring)."""
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def forward(self, input_ids, attention_mask=None, position_ids=None, labels=None, **kwargs):
        """Logits [b, t, vocab] (and the next-token loss with labels). Sequences of one batch
        must have equal length: an attention_mask with padding is refused."""
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError("OmniHybridForCausalLM takes no padding (attention_mask has zeros): "
                             "generate one sequence at a time or batch equal lengths")
        logits = self.lm_head(self.model(input_ids, position_ids))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)
