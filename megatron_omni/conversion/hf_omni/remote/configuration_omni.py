"""Configuration of an exported megatron-omni model (remote code: plain transformers, no
megatron_omni import). Sub-configs are kept as dicts: ``llm`` (Qwen3Config),
``vision`` (SiglipVisionConfig), ``audio`` (WhisperConfig)."""
from transformers import PretrainedConfig, Qwen3Config, SiglipVisionConfig, WhisperConfig


class MegatronOmniConfig(PretrainedConfig):
    """The omni model: a Qwen3 LLM, a SigLIP vision tower, a Whisper encoder and two projectors.

    vision_projector: "resampler" (image_tokens queries per image / per package of
        frames_per_package video frames, resampler_heads heads) or "mlp" (one token per patch).
    audio_projector: "conv_gmlp" (4x downsampling) or "mlp".
    projector_hidden_size: hidden width of the MLP / Conv-GMLP projectors (None: the LLM width).
    tmrope / mrope_sections: TMRoPE on, and the (t, h, w) rotary frequency pairs per axis.
    placeholder_ids: {"image", "video", "audio"} token ids whose positions take media tokens.
    """

    model_type = "megatron_omni"

    def __init__(self, llm=None, vision=None, audio=None, vision_projector="resampler",
                 audio_projector="conv_gmlp", image_tokens=64, resampler_heads=8, frames_per_package=1,
                 projector_hidden_size=None, tmrope=True, mrope_sections=None, rope_theta=10000.0,
                 placeholder_ids=None, megatron_model=None, **kwargs):
        self.llm = dict(llm or {})
        self.vision = dict(vision or {})
        self.audio = dict(audio or {})
        self.vision_projector, self.audio_projector = vision_projector, audio_projector
        self.image_tokens, self.resampler_heads = image_tokens, resampler_heads
        self.frames_per_package, self.projector_hidden_size = frames_per_package, projector_hidden_size
        self.tmrope, self.mrope_sections, self.rope_theta = tmrope, mrope_sections, rope_theta
        self.placeholder_ids = dict(placeholder_ids or {})
        self.megatron_model = megatron_model
        super().__init__(**kwargs)

    def get_text_config(self, *args, **kwargs) -> Qwen3Config:
        """The LLM's config (what generate() sizes its cache by)."""
        return self.qwen3()

    def qwen3(self) -> Qwen3Config:
        return Qwen3Config(**self.llm)

    def siglip(self) -> SiglipVisionConfig:
        return SiglipVisionConfig(**self.vision)

    def whisper(self) -> WhisperConfig:
        return WhisperConfig(**self.audio)
