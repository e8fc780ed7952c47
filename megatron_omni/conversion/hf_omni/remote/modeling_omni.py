"""An exported megatron-omni model in plain PyTorch / transformers (remote code: this folder's
files only, no megatron_omni import).

    tokens -> Qwen3 word embeddings                                   [b, s, h]
    pixel_values [n_img, C, S, S]        -> SiglipVisionModel -> vision projector -> image tokens
    pixel_values_videos [ΣT, C, S, S]    -> SiglipVisionModel -> per video (video_frames) projector
    input_features [n_aud, mels, F]      -> Whisper encoder (clip i: its feature_frames[i] frames)
                                            -> audio projector
    the positions holding each placeholder id are overwritten by that kind's tokens, in order
    -> Qwen3 decoder layers with TMRoPE (position_ids [b, 3, s]) -> norm -> lm_head

The projectors (3D-Resampler, Conv-GMLP, MLP) and TMRoPE are written here against torch; the
parameter names are those of the megatron model, so the export is a rename-free copy for them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel, Qwen3ForCausalLM, SiglipVisionModel
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .configuration_omni import MegatronOmniConfig


def _sincos(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """[len, dim] = [sin(p w) | cos(p w)], w_i = 10000^(-i / (dim / 2)), computed in float64."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


class Resampler3D(nn.Module):
    """Learnable queries cross-attending to the patches of one image or one package of frames:
    [b, T, N, kv] -> [b, ceil(T / F), Q, out]. Keys get 2-D (row | column) and frame sin-cos."""

    def __init__(self, num_queries, embed_dim, num_heads, kv_dim, output_size, frames_per_package):
        super().__init__()
        self.num_queries, self.embed_dim, self.kv_dim = num_queries, embed_dim, kv_dim
        self.frames_per_package = frames_per_package
        self.query = nn.Parameter(torch.zeros(num_queries, embed_dim))
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False)
        self.ln_q = nn.LayerNorm(embed_dim, eps=1e-6)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.ln_post = nn.LayerNorm(embed_dim, eps=1e-6)
        self.proj = nn.Linear(embed_dim, output_size, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() == 3:
            return self.forward(features[:, None])[:, 0]
        b, t, n, _ = features.shape
        f = min(self.frames_per_package, t)
        packages = -(-t // f)
        pad = packages * f - t
        if pad:
            features = torch.cat([features, features.new_zeros(b, pad, n, self.kv_dim)], dim=1)
        kv = self.ln_kv(self.kv_proj(features.reshape(b * packages, f, n, self.kv_dim)))
        side, half = math.isqrt(n), self.embed_dim // 2
        rows = _sincos(torch.arange(side), half)[:, None, :].expand(side, side, half)
        cols = _sincos(torch.arange(side), half)[None, :, :].expand(side, side, half)
        grid = torch.cat([rows, cols], dim=-1).reshape(n, self.embed_dim)
        pos = (grid[None] + _sincos(torch.arange(f), self.embed_dim)[:, None, :]).to(kv)
        keys = (kv + pos).flatten(1, 2)
        padding = torch.arange(packages * f, device=features.device).repeat(b, 1) >= t
        padding = padding.view(b * packages, f, 1).expand(-1, -1, n).flatten(1)
        queries = self.ln_q(self.query).to(kv)[None].expand(b * packages, -1, -1)
        out, _ = self.attn(queries, keys, kv.flatten(1, 2), key_padding_mask=padding if pad else None,
                           need_weights=False)
        return self.proj(self.ln_post(out)).view(b, packages, self.num_queries, -1)


class ConvGMLP(nn.Module):
    """[b, L, in] -> two GELU(stride-2 conv) -> LayerNorm -> down(GELU(gate) * up): [b, ~L/4, out]."""

    def __init__(self, input_size, hidden_size, output_size):
        super().__init__()
        self.conv1 = nn.Conv1d(input_size, hidden_size, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(hidden_size, hidden_size, kernel_size=3, stride=2, padding=1)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-5)
        self.gate_up = nn.Linear(hidden_size, 2 * hidden_size)
        self.down = nn.Linear(hidden_size, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv2(F.gelu(self.conv1(x.transpose(1, 2))))).transpose(1, 2)
        gate, up = self.gate_up(self.norm(x)).chunk(2, dim=-1)
        return self.down(F.gelu(gate) * up)


class MLPProjector(nn.Module):
    """[..., in] -> Linear -> GELU (exact) -> Linear -> [..., out]."""

    def __init__(self, input_size, hidden_size, output_size):
        super().__init__()
        self.linear_fc1 = nn.Linear(input_size, hidden_size)
        self.linear_fc2 = nn.Linear(hidden_size, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.gelu(self.linear_fc1(x)))


class TMRotaryEmbedding(nn.Module):
    """(cos, sin) [b, s, head_dim] of TMRoPE ids [b, 3, s]: frequency pair i is rotated by the
    temporal id for i < sections[0], the height id for the next sections[1], the width id for
    the rest (Qwen2-VL's mrope layout, both halves of the rotate-half pair alike)."""

    def __init__(self, head_dim: int, theta: float, sections):
        super().__init__()
        self.sections, self.head_dim, self.theta = list(sections), head_dim, theta

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype):
        # computed here, not held in a buffer: from_pretrained leaves non-persistent buffers unset
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=position_ids.device) / self.head_dim
        inv_freq = 1.0 / (self.theta ** exponents)
        freqs = position_ids.float()[..., None] * inv_freq              # [b, 3, s, d/2]
        emb = torch.cat([freqs, freqs], dim=-1)                         # [b, 3, s, d]
        parts = emb.split(self.sections * 2, dim=-1)
        emb = torch.cat([p[:, i % 3] for i, p in enumerate(parts)], dim=-1)   # [b, s, d]
        return emb.cos().to(dtype), emb.sin().to(dtype)


class MegatronOmniPreTrainedModel(PreTrainedModel):
    config_class = MegatronOmniConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    _no_split_modules = ["Qwen3DecoderLayer", "SiglipEncoderLayer", "WhisperEncoderLayer"]


class MegatronOmniForConditionalGeneration(MegatronOmniPreTrainedModel, GenerationMixin):
    """The omni model; ``forward`` takes the processor's outputs (processing_omni.py)."""

    def __init__(self, config: MegatronOmniConfig):
        super().__init__(config)
        text = config.qwen3()
        self.language_model = Qwen3ForCausalLM(text)
        self.vision_tower = SiglipVisionModel(config.siglip())
        self.audio_tower = WhisperEncoder(config.whisper())
        h, vision_width = text.hidden_size, config.vision["hidden_size"]
        audio_width = config.audio["d_model"]
        hidden = config.projector_hidden_size or h
        if config.vision_projector == "resampler":
            self.vision_projector = Resampler3D(config.image_tokens, h, config.resampler_heads, vision_width, h,
                                                config.frames_per_package)
        else:
            self.vision_projector = MLPProjector(vision_width, hidden, h)
        if config.audio_projector == "conv_gmlp":
            self.audio_projector = ConvGMLP(audio_width, hidden, h)
        else:
            self.audio_projector = MLPProjector(audio_width, hidden, h)
        sections = config.mrope_sections
        self.rotary = TMRotaryEmbedding(text.head_dim, config.rope_theta, sections) if config.tmrope else None
        self.rope_deltas = None
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    # ------------------------------------------------------------------ media

    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """One clip [1, mels, F] through the Whisper encoder's modules (any F up to
        2 * max_source_positions; WhisperEncoder.forward insists on exactly that many)."""
        tower = self.audio_tower
        x = F.gelu(tower.conv1(mel.to(tower.conv1.weight.dtype)))
        x = F.gelu(tower.conv2(x)).transpose(1, 2)
        x = x + tower.embed_positions.weight[: x.shape[1]]
        for layer in tower.layers:
            x = layer(x, attention_mask=None)
            x = x[0] if isinstance(x, tuple) else x
        return tower.layer_norm(x)

    def media_features(self, pixel_values=None, pixel_values_videos=None, video_frames=None,
                       input_features=None, feature_frames=None) -> dict[str, torch.Tensor]:
        """{kind: [tokens of all items of that kind, h]} in item order."""
        features = {}
        if pixel_values is not None and len(pixel_values):
            patches = self.vision_tower(pixel_values=pixel_values).last_hidden_state
            features["image"] = self.vision_projector(patches).flatten(0, -2)
        if pixel_values_videos is not None and len(pixel_values_videos):
            frames = self.vision_tower(pixel_values=pixel_values_videos).last_hidden_state
            per_video = frames.split([int(n) for n in video_frames])
            features["video"] = torch.cat([self.vision_projector(f[None]).flatten(0, -2) for f in per_video])
        if input_features is not None and len(input_features):
            frames = [int(n) for n in feature_frames]
            features["audio"] = torch.cat([self.audio_projector(self.encode_audio(input_features[i:i + 1, :, :n]))[0]
                                           for i, n in enumerate(frames)])
        return features

    def embed(self, input_ids: torch.Tensor, **media) -> torch.Tensor:
        word = self.get_input_embeddings()(input_ids)
        b, s, h = word.shape
        flat = word.reshape(b * s, h)
        for kind, tokens in self.media_features(**media).items():
            index = (input_ids.reshape(-1) == self.config.placeholder_ids[kind]).nonzero().squeeze(1)
            if index.numel() != tokens.shape[0]:
                raise ValueError(f"{index.numel()} {kind} placeholder positions but the {kind} inputs give "
                                 f"{tokens.shape[0]} tokens; use the processor to expand the placeholders")
            flat = flat.index_copy(0, index, tokens.to(flat.dtype))
        return flat.view(b, s, h)

    # ------------------------------------------------------------------ forward

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, pixel_values=None, pixel_values_videos=None, video_frames=None,
                input_features=None, feature_frames=None, logits_to_keep=0, **kwargs):
        """Logits [b, s, vocab]. ``position_ids``: TMRoPE ids [b, 3, s] for a prompt (the
        processor's); None continues after the prompt's largest id (generation)."""
        lm = self.language_model
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, pixel_values=pixel_values,
                                       pixel_values_videos=pixel_values_videos, video_frames=video_frames,
                                       input_features=input_features, feature_frames=feature_frames)
        b, s = inputs_embeds.shape[:2]
        if use_cache and cache is None:
            cache = DynamicCache(config=lm.config)
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is not None and position_ids.dim() == 3:
            tm_ids = position_ids
            self.rope_deltas = position_ids.amax(dim=(1, 2)) + 1 - (past + s)
        else:
            steps = torch.arange(past, past + s, device=inputs_embeds.device)[None].expand(b, -1)
            delta = self.rope_deltas if (self.rope_deltas is not None and past) else torch.zeros(b, dtype=torch.long)
            tm_ids = (steps + delta.to(steps.device)[:, None])[:, None].expand(-1, 3, -1)
        text_positions = torch.arange(past, past + s, device=inputs_embeds.device)[None].expand(b, -1)
        mask = create_causal_mask(config=lm.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  cache=cache, position_ids=text_positions)
        if self.rotary is not None:
            rope = self.rotary(tm_ids, inputs_embeds.dtype)
        else:
            rope = lm.model.rotary_emb(inputs_embeds, tm_ids[:, 0])
        x = inputs_embeds
        for layer in lm.model.layers:
            x = layer(x, attention_mask=mask, position_embeddings=rope, position_ids=text_positions, cache=cache,
                      use_cache=use_cache, **kwargs)
        x = lm.model.norm(x)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) and logits_to_keep else slice(None)
        logits = lm.lm_head(x[:, keep])
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache if use_cache else None)

    def prepare_inputs_for_generation(self, input_ids, cache=None, is_first_iteration=False, **kwargs):
        media = {k: kwargs.pop(k, None) for k in ("pixel_values", "pixel_values_videos", "video_frames",
                                                  "input_features", "feature_frames")}
        position_ids = kwargs.pop("position_ids", None)
        inputs = super().prepare_inputs_for_generation(input_ids, cache=cache, is_first_iteration=is_first_iteration,
                                                       **kwargs)
        inputs.pop("position_ids", None)
        if is_first_iteration or cache is None or cache.get_seq_length() == 0:
            inputs.update(media, position_ids=position_ids)
        return inputs


__all__ = ["MegatronOmniForConditionalGeneration"]
