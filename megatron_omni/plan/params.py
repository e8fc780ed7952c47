"""Parameter counts of one rank, by parameter group, from the config alone (no model is built).

The counts follow the modules the model builders create (models/llm/spec.py, models/encoders/,
models/projectors/) under megatron's tensor-parallel sharding: column- and row-parallel weights
hold 1/tp of their rows or columns, row-parallel biases, norms and the QK norms are whole on
every TP rank, the vocabulary is padded to a multiple of 128 and split over tp. Pipeline stage 0
holds the word embedding and (omni) the encoders and projectors, the last stage the final norm
and the output layer (a second copy of the embedding when it is tied and pp > 1).
tests/plan/test_params.py checks every count against the built model.
"""
from __future__ import annotations

from megatron_omni.config.encoders import audio_config, vision_config
from megatron_omni.config.schema import OmniConfig
from megatron_omni.contract.projectors import projector_layouts

VOCAB_DIVISOR = 128
"""The embedding table's padding (models/llm/model.py pads alike)."""
DEFAULT_VOCAB = 151936
"""Vocabulary assumed when model.vocab_size is null (the tokenizer decides): Qwen3's."""


def padded_vocab(cfg: OmniConfig) -> int:
    vocab = cfg.model.vocab_size or DEFAULT_VOCAB
    return -(-vocab // VOCAB_DIVISOR) * VOCAB_DIVISOR


def decoder_layer(cfg: OmniConfig, letter: str, tp: int) -> dict[str, int]:
    """{group: parameters} of one decoder layer (D dense, S sparse, L linear) on one TP rank."""
    m = cfg.model
    h, d, f = m.hidden_size, m.head_dim, m.ffn_hidden_size
    q = m.num_attention_heads * d
    groups = m.num_query_groups
    gate = False
    if letter == "S":
        gate = m.sparse.output_gate
    if letter == "L":
        groups = m.linear.num_query_groups or m.num_attention_heads
        gate = m.linear.output_gate
    attention = (q + 2 * groups * d) * h // tp + h * q // tp + 2 * d   # qkv, proj, q/k norms
    attention += (q * h // tp if gate else 0) + (q // tp if letter == "L" else 0)  # gate, out norm
    mlp = 2 * f * h // tp + h * f // tp + 2 * h                        # fc1, fc2, the two layer norms
    if letter == "L":
        return {"llm": mlp, "linear_attention": attention}
    return {"llm": mlp + attention}


def encoder_tower(hidden: int, layers: int, ffn: int, tp: int) -> int:
    """Layers of a biased pre-LN encoder (models/encoders/spec.py) plus its final LayerNorm."""
    per_layer = (3 * hidden * hidden + 3 * hidden) // tp + (hidden * hidden // tp + hidden) \
        + (ffn * hidden + ffn) // tp + (hidden * ffn // tp + hidden) + 4 * hidden
    return layers * per_layer + 2 * hidden


def encoders(cfg: OmniConfig, tp: int) -> dict[str, int]:
    """{group: parameters} of the omni model's encoders and projectors on one TP rank."""
    omni, h = cfg.model.omni, cfg.model.hidden_size
    v, a = vision_config(omni), audio_config(omni)
    vision = (v.num_channels * v.patch_size ** 2 * v.hidden_size + v.hidden_size
              + v.num_patches * v.hidden_size
              + encoder_tower(v.hidden_size, v.num_layers, v.ffn_hidden_size, tp))
    audio = (3 * a.num_mel_bins * a.hidden_size + a.hidden_size + 3 * a.hidden_size ** 2 + a.hidden_size
             + encoder_tower(a.hidden_size, a.num_layers, a.ffn_hidden_size, tp))
    vision_layout, audio_layout = projector_layouts(omni)
    width = omni.projector_hidden_size or h
    if vision_layout.name == "resampler":
        vis_proj = (omni.image_tokens * h + v.hidden_size * h + 6 * h   # queries, kv_proj, 3 LNs
                    + 3 * h * h + 3 * h + h * h + h + h * h)           # attention, proj
    else:
        vis_proj = mlp_projector(v.hidden_size, width, h, tp)
    if audio_layout.name == "conv_gmlp":
        aud_proj = (3 * a.hidden_size * width + width + 3 * width ** 2 + width + 2 * width
                    + 2 * width * width + 2 * width + width * h + h)
    else:
        aud_proj = mlp_projector(a.hidden_size, width, h, tp)
    return {"vision_encoder": vision, "audio_encoder": audio, "projectors": vis_proj + aud_proj}


def mlp_projector(inputs: int, hidden: int, outputs: int, tp: int) -> int:
    return (inputs * hidden + hidden) // tp + hidden * outputs // tp + outputs


def stage_layers(cfg: OmniConfig, pp: int, vpp: int, stage: int) -> str:
    """Layer letters held by pipeline rank `stage`: its vpp chunks of num_layers / (pp·vpp)."""
    letters = cfg.model.layer_types()
    chunk = len(letters) // (pp * vpp)
    return "".join(letters[(c * pp + stage) * chunk:(c * pp + stage + 1) * chunk] for c in range(vpp))


def add(total: dict[str, int], part: dict[str, int]) -> None:
    for group, n in part.items():
        total[group] = total.get(group, 0) + n


def rank_parameters(cfg: OmniConfig, stage: int, tp: int | None = None, pp: int | None = None,
                    vpp: int | None = None) -> dict[str, int]:
    """{group: parameters} on a rank of pipeline `stage` (layout: cfg.parallel unless given)."""
    p = cfg.parallel
    tp, pp, vpp = tp or p.tp, pp or p.pp, vpp or p.vpp or 1
    m = cfg.model
    total: dict[str, int] = {}
    for letter in stage_layers(cfg, pp, vpp, stage):
        add(total, decoder_layer(cfg, letter, tp))
    embedding = padded_vocab(cfg) // tp * m.hidden_size
    if stage == 0:
        add(total, {"llm": embedding})
        if m.omni is not None:
            add(total, encoders(cfg, tp))
    if stage == pp - 1:
        tied_here = m.tie_embeddings and pp == 1
        add(total, {"llm": m.hidden_size + (0 if tied_here else embedding)})
    return total
