"""Hybrid layers in the omni model (model.layer_pattern + model.omni), HyPE: the sparse (S) layers
attend without positions, the rotary layers (Lightning L, dense D) rotate by the TMRoPE ids of
the batch, exactly as TMRotaryEmbedding rotates them."""
import dataclasses

import pytest
import torch
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb

from megatron_omni.config import load_config
from megatron_omni.models.omni.model import OmniModel, mrope_sections
from megatron_omni.models.positions.tmrope import TMRotaryEmbedding
from tests.omni_batches import PLACEHOLDER_IDS, micro_batch

VOCAB, SEQ = 200, 64
CONFIG = ["model.num_layers=3", "model.layer_pattern=SLD", "model.omni.preset=tiny", f"data.seq_length={SEQ}",
          "model.backend=local", "training.precision=fp32"]


class _Stop(Exception):
    pass


def _attention_inputs(model: OmniModel, batch) -> dict:
    """{layer letter: (q, k) after the QK norm, (q, k) the core attention receives}, [s, b, heads, d]."""
    seen, hooks = {}, []
    for letter, layer in zip("SLD", model.llm.decoder.layers):
        attn = layer.self_attention

        def normed(module, args, out, letter=letter, which=None):
            seen.setdefault(letter, {})[which] = out.detach().clone()

        def core(module, args, kwargs, letter=letter):
            seen[letter]["core"] = (args[0].detach().clone(), args[1].detach().clone())
            if letter == "D":
                raise _Stop

        hooks += [attn.q_layernorm.register_forward_hook(lambda m, a, o, l=letter: normed(m, a, o, l, "q")),
                  attn.k_layernorm.register_forward_hook(lambda m, a, o, l=letter: normed(m, a, o, l, "k")),
                  attn.core_attention.register_forward_pre_hook(core, with_kwargs=True)]
    with pytest.raises(_Stop):
        model(batch.tokens, batch.position_ids, None, labels=batch.labels, batch=batch)
    for h in hooks:
        h.remove()
    return seen


def test_sparse_layers_are_nope_and_rotary_layers_take_the_tmrope_ids():
    torch.manual_seed(0)
    cfg = load_config(None, CONFIG)
    model = OmniModel(cfg, VOCAB, PLACEHOLDER_IDS)
    video = micro_batch(cfg.model.omni, ["video"], SEQ, VOCAB, video_frames=4)
    flat = dataclasses.replace(video, position_ids=video.position_ids[:, :1].expand(-1, 3, -1).contiguous())
    assert not torch.equal(video.position_ids, flat.position_ids)  # the video's height/width ids differ
    rope = TMRotaryEmbedding(cfg.model.head_dim, mrope_sections(cfg), cfg.model.rope_theta)
    for b in (video, flat):
        seen = _attention_inputs(model, b)
        q, k = seen["S"]["core"]
        assert torch.equal(q, seen["S"]["q"]) and torch.equal(k, seen["S"]["k"])  # NoPE
        freqs = rope(b.position_ids.transpose(0, 1))  # [3, b, s] -> [s, b, 1, d]
        for letter in "LD":
            q, k = seen[letter]["core"]
            for got, raw in ((q, seen[letter]["q"]), (k, seen[letter]["k"])):
                torch.testing.assert_close(got, apply_rotary_pos_emb(raw, freqs, config=model.config),
                                           atol=1e-6, rtol=0)
