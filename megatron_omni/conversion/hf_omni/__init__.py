"""The omni model ↔ one self-contained Hugging Face folder (docs/hf_export.md, "Omni model").

``export_omni``: a megatron omni checkpoint (any TP/PP; resharded to one rank on load) → a folder
with config.json, model.safetensors, generation_config.json, the tokenizer, the processor
configs and the remote-code files of remote/ (``AutoModelForCausalLM.from_pretrained(folder,
trust_remote_code=True)`` and ``AutoProcessor.from_pretrained(folder, trust_remote_code=True)``
need only torch and transformers). Its weights:

    language_model.*   transformers' Qwen3ForCausalLM       (conversion/qwen3.py megatron_to_hf)
    vision_tower.*     transformers' SiglipVisionModel      (the SIGLIP table, inverted)
    audio_tower.*      transformers' WhisperEncoder         (the WHISPER table, inverted)
    vision_projector.*, audio_projector.*                   our names, copied

``omni_folder_to_megatron``: such a folder → a weights-only megatron checkpoint, bit-identical.
Both publish their output only when written and verified (common.staged_folder).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from megatron_omni.config import config_from_dict
from megatron_omni.config import encoders
from megatron_omni.contract.batch import OmniBatch
from megatron_omni.contract.media import PLACEHOLDERS
from megatron_omni.contract.projectors import projector_layouts
from megatron_omni.conversion import qwen3
from megatron_omni.conversion.checkpoints import plain_state, read_tokenizer, resolve_checkpoint, single_rank_config
from megatron_omni.conversion.common import ConversionError, read_hf_config, read_hf_weights, staged_folder
from megatron_omni.conversion.encoder_import import EncoderMapping
from megatron_omni.conversion.siglip import SIGLIP
from megatron_omni.conversion.whisper import WHISPER
from megatron_omni.models.llm.model import rope_base

REMOTE = Path(__file__).parent / "remote"
REMOTE_FILES = ("configuration_omni.py", "modeling_omni.py", "processing_omni.py")
PARTS = {"language_model.": "llm", "vision_tower.": "vision_encoder", "audio_tower.": "audio_encoder",
         "vision_projector.": "vision_projector", "audio_projector.": "audio_projector"}
"""HF prefix → attribute of our OmniModel."""
VISION_PREFIX, AUDIO_PREFIX = "vision_model.", ""
"""Where SiglipVisionModel / WhisperEncoder keep their tower's tensors in their state dict."""


def is_omni_checkpoint(common: dict) -> bool:
    """Whether a checkpoint's common state (training/checkpoint.read_common) is an omni model's."""
    return (common.get("config", {}).get("model") or {}).get("omni") is not None


# ---------------------------------------------------------------------------- weights


def encoder_to_hf(mapping: EncoderMapping, state: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """Our encoder's full (TP=1) state dict → the HF tower's (bare keys): ``mapping`` inverted,
    the fused per-head QKV split into q/k/v (a k bias the HF side lacks must be zero)."""
    out = {hf: state[ours] for ours, (hf, _) in mapping.tower(cfg).items()}
    heads = cfg.num_attention_heads
    for i in range(cfg.num_layers):
        ours, hf = f"transformer.layers.{i}.", mapping.layer_prefix.format(i=i)
        out.update({hf + hf_name: state[ours + name] for name, hf_name in mapping.layer.items()})
        for kind in ("weight", "bias"):
            fused = state[f"{ours}self_attention.linear_qkv.{kind}"]
            q, k, v = fused.reshape(heads, 3, -1, *fused.shape[1:]).unbind(1)
            for part, t in zip("qkv", (q, k, v)):
                name = f"{hf}{mapping.qkv.format(part)}.{kind}"
                if kind == "bias" and part == "k" and not mapping.k_bias:
                    if t.abs().max() > 0:
                        raise ConversionError(f"{ours}self_attention.linear_qkv.bias: its k part is not zero; "
                                              f"the {mapping.what} has no k bias")
                    continue
                out[name] = t.reshape(-1, *fused.shape[1:]).contiguous()
    return out


def omni_to_hf_state(model, cfg, vocab_size: int) -> dict[str, torch.Tensor]:
    """The HF folder's state dict of our TP=1 OmniModel (``cfg`` its config; the LLM keeps the
    true vocabulary's ``vocab_size`` rows)."""
    omni = cfg.model.omni
    out = {f"language_model.{k}": v
           for k, v in qwen3.megatron_to_hf(plain_state(model.llm), cfg.model, vocab_size).items()}
    for prefix, mapping, module, sub, enc_cfg in (
            ("vision_tower.", SIGLIP, model.vision_encoder, VISION_PREFIX, encoders.vision_config(omni)),
            ("audio_tower.", WHISPER, model.audio_encoder, AUDIO_PREFIX, encoders.audio_config(omni))):
        out.update({prefix + sub + k: v for k, v in encoder_to_hf(mapping, plain_state(module), enc_cfg).items()})
    for name in ("vision_projector", "audio_projector"):
        out.update({f"{name}.{k}": v for k, v in plain_state(getattr(model, name)).items()})
    return {k: v.contiguous() for k, v in out.items()}


def hf_to_omni_state(state: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """The inverse of omni_to_hf_state: our OmniModel's full state dict (``llm.``-prefixed)."""
    omni = cfg.model.omni
    parts = {prefix: {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} for prefix in PARTS}
    stray = sorted(k for k in state if not k.startswith(tuple(PARTS)))
    if stray:
        raise ConversionError(f"unexpected tensors (not under {sorted(PARTS)}): {stray[:6]}")
    out = {f"llm.{k}": v for k, v in qwen3.hf_to_megatron(parts["language_model."], cfg.model).items()}
    out.update({f"vision_encoder.{k}": v for k, v in
                SIGLIP.hf_to_megatron(parts["vision_tower."], encoders.vision_config(omni)).items()})
    out.update({f"audio_encoder.{k}": v for k, v in
                WHISPER.hf_to_megatron(parts["audio_tower."], encoders.audio_config(omni)).items()})
    for prefix in ("vision_projector.", "audio_projector."):
        out.update({PARTS[prefix] + "." + k: v for k, v in parts[prefix].items()})
    return out


# ---------------------------------------------------------------------------- configs


def hf_omni_config(cfg, vocab_size: int, dtype: str, tok) -> dict:
    """config.json of the export."""
    from megatron_omni.models.omni.model import mrope_sections

    omni = cfg.model.omni
    vcfg, acfg = encoders.vision_config(omni), encoders.audio_config(omni)
    if acfg.layer_norm_eps != 1e-5:
        raise ConversionError(f"model.omni.audio_overrides layer_norm_eps={acfg.layer_norm_eps}: Whisper's "
                              "encoder layer norms use 1e-5")
    text = qwen3.hf_config(cfg.model, vocab_size, dtype).to_dict()
    text.update(eos_token_id=tok.eod_id, pad_token_id=tok.pad_id)
    vision = dict(hidden_size=vcfg.hidden_size, intermediate_size=vcfg.ffn_hidden_size,
                  num_hidden_layers=vcfg.num_layers, num_attention_heads=vcfg.num_attention_heads,
                  num_channels=vcfg.num_channels, image_size=vcfg.image_size, patch_size=vcfg.patch_size,
                  hidden_act="gelu_pytorch_tanh", layer_norm_eps=vcfg.layer_norm_eps, vision_use_head=False)
    audio = dict(d_model=acfg.hidden_size, encoder_layers=acfg.num_layers,
                 encoder_attention_heads=acfg.num_attention_heads, encoder_ffn_dim=acfg.ffn_hidden_size,
                 num_mel_bins=acfg.num_mel_bins, max_source_positions=acfg.max_source_positions,
                 activation_function="gelu", decoder_layers=1, decoder_attention_heads=acfg.num_attention_heads)
    return dict(
        architectures=["MegatronOmniForConditionalGeneration"], model_type="megatron_omni", dtype=dtype,
        auto_map={"AutoConfig": "configuration_omni.MegatronOmniConfig",
                  "AutoModel": "modeling_omni.MegatronOmniForConditionalGeneration",
                  "AutoModelForCausalLM": "modeling_omni.MegatronOmniForConditionalGeneration"},
        llm=text, vision=vision, audio=audio,
        vision_projector=omni.vision_projector, audio_projector=omni.audio_projector,
        image_tokens=omni.image_tokens, resampler_heads=omni.resampler_heads,
        frames_per_package=omni.frames_per_package, projector_hidden_size=omni.projector_hidden_size,
        tmrope=omni.tmrope, mrope_sections=mrope_sections(cfg), rope_theta=float(rope_base(cfg.model)),
        placeholder_ids=placeholder_ids(tok), eos_token_id=tok.eod_id, pad_token_id=tok.pad_id,
        tie_word_embeddings=cfg.model.tie_embeddings,
        megatron_model=dataclasses.asdict(cfg.model), megatron_vocab_size=vocab_size)


def placeholder_ids(tok) -> dict[str, int]:
    return {kind: tok.special_ids[text] for kind, text in PLACEHOLDERS.items()}


CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                 "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
                 "{% if c['type'] == 'text' %}{{ c['text'] }}{% else %}<{{ c['type'] }}>{% endif %}"
                 "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
"""ChatML, as data/sample_format.render_conversation renders conversations; media parts
(``{"type": "image"}``, video, audio) become their placeholders."""


def processor_media(cfg, tok) -> dict:
    """The processor's expansion table (contract/media.py MediaTokens of the model)."""
    omni = cfg.model.omni
    mt = encoders.media_tokens(omni)
    _, audio = projector_layouts(omni)
    return dict(image_grid=list(mt.image_grid), video_grid=list(mt.video_grid),
                video_frames_per_group=mt.video_frames_per_group, audio_downsample_convs=audio.downsample_convs,
                audio_seconds_per_token=audio.seconds_per_token, placeholder_ids=placeholder_ids(tok),
                pad_audio_to_30s=cfg.data.multimodal.pad_audio_to_30s if cfg.data.multimodal else True)


def _remote_module(name: str):
    """One of the remote-code files, imported by path (it needs only torch and transformers)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"megatron_omni_remote_{name}", REMOTE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_processor(folder: Path, cfg, tok) -> None:
    """Tokenizer files, the SigLIP image processor, the Whisper feature extractor and the
    processor (expansion table, chat template), saved by the remote processor class itself."""
    from transformers import PreTrainedTokenizerFast, SiglipImageProcessor, WhisperFeatureExtractor

    vcfg, acfg = encoders.vision_config(cfg.model.omni), encoders.audio_config(cfg.model.omni)
    tok.save_hf_files(folder)
    image = SiglipImageProcessor(size={"height": vcfg.image_size, "width": vcfg.image_size},
                                 image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=3)
    audio = WhisperFeatureExtractor(feature_size=acfg.num_mel_bins)
    processor = _remote_module("processing_omni").MegatronOmniProcessor(
        image, audio, PreTrainedTokenizerFast.from_pretrained(folder), chat_template=CHAT_TEMPLATE,
        media=processor_media(cfg, tok))
    processor.save_pretrained(folder)
    path = folder / "processor_config.json"
    data = json.loads(path.read_text())
    data["auto_map"] = {"AutoProcessor": "processing_omni.MegatronOmniProcessor"}
    path.write_text(json.dumps(data, indent=2) + "\n")


# ---------------------------------------------------------------------------- export


def load_omni(source: str | Path, tokenizer: str | None = None):
    """(config, the TP=1 OmniModel in eval mode, vocab size, tokenizer, dtype name) of an omni
    checkpoint (run folder or checkpoint folder). Needs a process group."""
    from megatron.core import parallel_state as ps, tensor_parallel

    from megatron_omni.models.omni.model import OmniModel
    from megatron_omni.training import checkpoint

    path = resolve_checkpoint(source)
    common = checkpoint.read_common(path)
    cfg = single_rank_config(config_from_dict(common["config"]), common["dtype"])
    tok_path = tokenizer or cfg.data.tokenizer
    if not tok_path:
        raise ConversionError(f"{source}: the run has no data.tokenizer; the omni export needs the tokenizer "
                              "(its placeholder and <eod> ids): pass --tokenizer")
    tok = read_tokenizer(tok_path, common["vocab_size"])
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(1, 1)
        tensor_parallel.model_parallel_cuda_manual_seed(cfg.training.seed)
    model = OmniModel(cfg, common["vocab_size"], placeholder_ids(tok))
    checkpoint.load_checkpoint(path, [model])
    return cfg, model.eval(), common["vocab_size"], tok, common["dtype"]


def write_folder(folder: Path, model, cfg, vocab_size: int, dtype: str, tok) -> int:
    """Write the HF folder's files into ``folder``; returns the number of tensors."""
    from transformers import GenerationConfig

    config = hf_omni_config(cfg, vocab_size, dtype, tok)
    state = omni_to_hf_state(model, cfg, vocab_size)
    if cfg.model.tie_embeddings:
        state.pop("language_model.lm_head.weight", None)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    GenerationConfig(eos_token_id=tok.eod_id, pad_token_id=tok.pad_id, do_sample=False,
                     max_new_tokens=32).save_pretrained(folder)
    for name in REMOTE_FILES:
        shutil.copy(REMOTE / name, folder / name)
    write_processor(folder, cfg, tok)
    return len(state)


def export_omni(source: str | Path, out: str | Path, tokenizer: str | None = None, verify: bool = True,
                tolerance: float = 1e-4) -> dict:
    """Export an omni checkpoint to the HF folder ``out`` (published only when written and, with
    ``verify``, its logits match ours on an image + video + audio + audio-video prompt)."""
    cfg, model, vocab_size, tok, dtype = load_omni(source, tokenizer)
    with staged_folder(out) as tmp:
        summary = {"hf_folder": str(out), "tensors": write_folder(tmp, model, cfg, vocab_size, dtype, tok)}
        if verify:
            summary["max_abs_logit_diff"] = verify_omni(model, tmp, tolerance)
    return summary


# ---------------------------------------------------------------------------- verify


CHECK_PROMPT = "look<image>watch<video>hear<audio>both<video><audio>done"
"""A prompt with every kind: an image, a video, an audio clip, a video with its audio track."""


def omni_batch(inputs: dict, timestamps) -> OmniBatch:
    """The OmniBatch (one row) of processor outputs, for our model's forward."""
    ids = inputs["input_ids"]
    videos = list(inputs["pixel_values_videos"].split(inputs["video_frames"].tolist())) \
        if "pixel_values_videos" in inputs else []
    empty = torch.zeros(0, 3, 1, 1)
    return OmniBatch(
        tokens=ids, labels=torch.zeros_like(ids), loss_mask=torch.ones(ids.shape), position_ids=inputs["position_ids"],
        sample_index=torch.zeros_like(ids), sample_ids=["check"], sample_modality=["cross"], sample_kinds=["check"],
        images=inputs.get("pixel_values", empty), videos=videos,
        video_timestamps=[torch.tensor(t, dtype=torch.float64) for t in (timestamps or [])][:len(videos)],
        audio_mel=inputs.get("input_features", torch.zeros(0, 1, 1)),
        audio_frames=inputs.get("feature_frames", torch.zeros(0, dtype=torch.long)))


def ours_logits(model, inputs: dict, timestamps) -> torch.Tensor:
    """Our OmniModel's logits [b, s, vocab] (fp32) on processor outputs."""
    with torch.no_grad():
        return model(inputs["input_ids"], inputs["position_ids"], None,
                     batch=omni_batch(inputs, timestamps)).float()


def verify_omni(model, folder: Path, tolerance: float) -> float:
    """Max |logit difference| between our model and the folder loaded by transformers (remote
    code) on CHECK_PROMPT; ConversionError above ``tolerance``."""
    from transformers import AutoModelForCausalLM, AutoProcessor

    cfg_dtype = next(model.parameters()).dtype
    hf = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=cfg_dtype).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    media = sample_media(model.vision_encoder.cfg.image_size)
    inputs = processor(CHECK_PROMPT, audio_in_video=True, **media)
    with torch.no_grad():
        theirs = hf(**inputs).logits.float()
    ours = ours_logits(model, inputs, media["video_timestamps"])[..., :theirs.shape[-1]]  # no padding
    diff = (ours - theirs).abs().max().item()
    if not diff <= tolerance:
        raise ConversionError(f"verify failed: max |logit diff| {diff:.3e} > {tolerance:.1e} on an image + video + "
                              "audio + audio-video prompt")
    return diff


def sample_media(size: int, seed: int = 0) -> dict:
    """Random media for a check prompt: one image, two videos of 3 frames (0.0 / 0.5 / 1.0 s)
    and two 0.6 s clips at 16 kHz, as the processor takes them (uint8 HWC frames, float waves)."""
    import numpy as np

    g = np.random.default_rng(seed)

    def frame():
        return g.integers(0, 256, (size, size, 3), dtype=np.uint8)

    return dict(images=[frame()], videos=[[frame() for _ in range(3)] for _ in range(2)],
                video_timestamps=[[0.0, 0.5, 1.0]] * 2,
                audio=[g.standard_normal(9600).astype(np.float32) * 0.1 for _ in range(2)])


# ---------------------------------------------------------------------------- read back


def omni_folder_to_megatron(folder: str | Path, out_root: str | Path) -> dict:
    """A folder written by export_omni → a weights-only megatron omni checkpoint (iteration 0)
    under ``out_root``, bit-identical to the exported weights. Needs a process group."""
    from megatron.core import parallel_state as ps, tensor_parallel

    from megatron_omni.models.omni.model import OmniModel
    from megatron_omni.training import checkpoint

    folder = Path(folder)
    raw = read_hf_config(folder)
    if raw.get("model_type") != "megatron_omni" or "megatron_model" not in raw:
        raise ConversionError(f"{folder}: config.json has model_type={raw.get('model_type')!r}; expected a folder "
                              "that `to-hf` wrote from an omni checkpoint (model_type 'megatron_omni')")
    cfg = config_from_dict({"model": raw["megatron_model"]})
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=str(folder / "tokenizer.json")))
    cfg = single_rank_config(cfg, raw.get("dtype", "float32"))
    vocab_size = raw["megatron_vocab_size"]
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(1, 1)
        tensor_parallel.model_parallel_cuda_manual_seed(cfg.training.seed)
    model = OmniModel(cfg, vocab_size, raw["placeholder_ids"])
    try:
        state = hf_to_omni_state(read_hf_weights(folder), cfg)
    except ConversionError as e:
        raise ConversionError(f"{folder}: {e}") from e
    missing, unexpected = model.load_state_dict(state, strict=False)  # one rank: the full tensors
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise ConversionError(f"{folder}: the weights do not fit the model its config.json describes: missing "
                              f"{missing[:6]}, unexpected {unexpected[:6]}")
    with staged_folder(out_root) as tmp:
        path = checkpoint.save_checkpoint(tmp, 0, [model], 0, dataclasses.asdict(cfg), vocab_size)
    return {"checkpoint": str(Path(out_root) / path.name), "tensors": len(state)}


def is_omni_source(source: str | Path) -> bool:
    """Whether a run folder / checkpoint folder holds an omni model (so ``to-hf`` exports it here);
    ConversionError naming ``--checkpoint`` for a path that is neither, or a damaged one."""
    from megatron_omni.training import checkpoint

    return is_omni_checkpoint(checkpoint.read_common(resolve_checkpoint(source)))
