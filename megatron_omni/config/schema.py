"""Typed configuration: one dataclass per topic, one docstring per field.

A run's YAML has one section per dataclass below (model, parallel, training, data, logging,
checkpoint) plus ``phase``. ``load_config`` (config/load.py) builds these from YAML and
``--set a.b=c`` overrides; ``validate`` (config/validate.py) checks cross-field rules.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ModelConfig:
    """The Qwen3-style decoder. Defaults are the ``tiny`` preset (config/presets.py)."""

    preset: str = "tiny"
    """Size preset the other fields start from: tiny, qwen3-0.6b, qwen3-1.7b, qwen3-8b, qwen3-32b, or
    custom (none: every field as given, e.g. an HF import's)."""
    num_layers: int = 4
    hidden_size: int = 64
    ffn_hidden_size: int = 192
    """SwiGLU intermediate size (each of gate and up)."""
    num_attention_heads: int = 4
    num_query_groups: int = 2
    """Key/value heads (GQA). Must divide num_attention_heads."""
    head_dim: int = 16
    """Per-head size (Qwen3 sets it independently of hidden_size / heads)."""
    vocab_size: int | None = None
    """Vocabulary size; null = the tokenizer's size (data.tokenizer)."""
    max_position_embeddings: int = 4096
    rope_theta: float = 1_000_000.0
    rope_scaling_factor: float = 1.0
    """RoPE stretch factor s for longer contexts (>= 1; 1 = no scaling), applied as rope_scaling
    says."""
    rope_scaling: Literal["linear", "ntk"] = "linear"
    """How rope_scaling_factor s acts: linear (position interpolation, positions / s) or ntk
    (NTK-aware: the base becomes rope_theta * s^(d/(d-2)), d = head_dim)."""
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    """Share the input embedding and the output layer (Qwen3-0.6B does; 8B/32B do not)."""
    init_std: float = 0.02
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    backend: Literal["auto", "te", "local"] = "auto"
    """Layer implementation: auto (TE when importable, else local), te, or local. With
    data.packed and dense (D) layers, auto picks local (TE's dense layers take no packed batches)
    and te is an error."""
    kernels: Literal["auto", "triton", "torch"] = "auto"
    """Attention ops of the S and L layers: auto (Triton with CUDA, else torch), triton (the
    Triton kernels; without CUDA in the Triton interpreter, ~600x slower), or torch (chunked
    PyTorch ops, same math; what CPU training runs). docs/kernels.md."""
    layer_pattern: str | None = None
    """Attention type of each layer, one letter per layer: D dense (GQA, RoPE), S sparse
    (InfLLM-V2, NoPE), L linear (Lightning, RoPE), e.g. "SLLS". 'hybrid' = the SALA-like default
    (1 sparse : 3 linear, first and last layers sparse); null = all dense (plain Qwen3)."""
    sparse: SparseAttentionConfig = field(default_factory=lambda: SparseAttentionConfig())
    """Settings of the S layers (defined at the end of this file)."""
    linear: LinearAttentionConfig = field(default_factory=lambda: LinearAttentionConfig())
    """Settings of the L layers (defined at the end of this file)."""
    omni: OmniModelConfig | None = None
    """Encoders and projectors of the omni model (defined at the end of this file); null = the
    text-only LLM."""

    def layer_types(self) -> str:
        """layer_pattern spelled out: one of D, S, L per layer."""
        if self.layer_pattern is None:
            return "D" * self.num_layers
        if self.layer_pattern == "hybrid":
            last = self.num_layers - 1
            return "".join("S" if i % 4 == 0 or i == last else "L" for i in range(self.num_layers))
        return self.layer_pattern


@dataclass
class ParallelConfig:
    """Parallel layout. The data-parallel size is derived: world / (tp · pp · cp)."""

    tp: int = 1
    """Tensor-parallel size (attention heads and MLP columns split)."""
    pp: int = 1
    """Pipeline-parallel size (layers split into stages)."""
    vpp: int | None = None
    """Virtual pipeline stages per rank (interleaved 1F1B); null or 1 = plain 1F1B."""
    cp: int = 1
    """Context-parallel size (the sequence split across ranks)."""
    sequence_parallel: bool = False
    """Split activations outside attention/MLP along the sequence over the TP group (needs tp>1)."""
    distributed_optimizer: bool = True
    """Shard optimizer state over data-parallel ranks (megatron's DistributedOptimizer)."""
    modality_decoupled: bool = False
    """Omni model: every pipeline stage holds the encoders and projectors and encodes a
    cost-balanced share of each step's media before the pipeline schedule, instead of stage 0
    encoding all of it inside the schedule (docs/modality_decoupled.md). Same checkpoints."""


@dataclass
class TrainingConfig:
    """Optimisation and schedule."""

    train_steps: int = 40
    num_epochs: int | None = None
    """Train this many passes over the finite omni data instead (SFT): train_steps becomes the
    steps in which the plan draws num_epochs x the samples of all sources
    (data/multimodal/loader.py epoch_steps); null = train_steps. Needs model.omni."""
    micro_batch_size: int = 2
    global_batch_size: int = 8
    """Samples per optimizer step = micro_batch_size · dp · number of micro-batches."""
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 4
    warmup_ratio: float | None = None
    """Warmup as a share of the training steps (e.g. 0.03): warmup_steps becomes
    round(warmup_ratio x train_steps) once train_steps is known; null = warmup_steps."""
    lr_decay_style: Literal["cosine", "linear", "constant"] = "cosine"
    """cosine, linear or constant (after warmup)."""
    lr_decay_steps: int | None = None
    """Steps over which lr decays to min_lr; null = train_steps."""
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    seed: int = 1234
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """auto (bf16 on GPU, fp32 on CPU), bf16 or fp32."""
    eval_interval: int = 20
    """Run validation every N steps (0 = never; with model.omni it needs data.multimodal.valid)."""
    eval_steps: int = 2
    """Global batches per validation (with model.omni: per modality of data.multimodal.valid)."""
    recompute: Literal["selective", "full"] | None = None
    """Activation recomputation: null, 'selective' (core attention) or 'full' (whole layers)."""
    trainable: list | None = None
    """Parameter groups that train (config/phases.py GROUPS; training/freeze.py freezes): llm,
    linear_attention, vision_encoder, audio_encoder, projectors, of those the model has; the rest
    is frozen (out of the optimizer and DDP buffers).
    null = the phase's default (config/phases.py: phase 1 projectors, phase 2 encoders +
    projectors, otherwise everything)."""
    group_lr: dict | None = None
    """Peak learning rate per parameter group, e.g. {vision_encoder: 1e-5, projectors: 1e-4};
    other groups use lr. Each decays to its peak * min_lr / lr on the same schedule."""


@dataclass
class DataConfig:
    """Indexed-binary text data (megatron-core GPTDataset + BlendedMegatronDatasetBuilder)."""

    tokenizer: str | None = None
    """Path to a sentencepiece .model or a HF tokenizer.json (required; relative paths are from
    the run's working directory). Like every file a run reads (train_blend, valid_blend,
    checkpoint.load, distill.teacher) it must exist when the launch starts, and
    ``pretrain_omni.py --dry-run`` checks that it does; ``--dry-run --layout-only`` skips the
    files (e.g. a cluster config checked where its data is not mounted)."""
    train_blend: list = field(default_factory=list)
    """Weighted blend: [weight1, prefix1, weight2, prefix2, ...] or [prefix] (prefix = path
    without .bin/.idx; both files must exist, see tokenizer). Text-only runs; the omni model
    reads data.multimodal."""
    valid_blend: list | None = None
    """Validation blend; null = a split of train_blend (see split: with
    training.eval_interval > 0 its validation share must be positive)."""
    split: str = "95,5,0"
    """train,valid,test percentages used when valid_blend is null."""
    seq_length: int = 128
    packed: bool = False
    """Treat each seq_length sample as a pack of the documents in it: sample boundaries follow
    the <eod> tokens, no document attends to another and Lightning states restart at each
    document (PackedSeqParams, qkv_format sbhd: RoPE positions run over the pack, which is the
    same attention as RoPE is relative). Needs training.micro_batch_size=1 and the local
    backend for dense layers; works with context parallelism. Labels and loss as unpacked."""
    num_workers: int = 0
    """DataLoader worker processes per rank."""
    cache_dir: str | None = None
    """Where megatron-core caches dataset indices; null = <checkpoint.dir>/data_cache."""
    multimodal: MultimodalDataConfig | None = None
    """Omni data (defined at the end of this file); null = text-only training from train_blend."""


@dataclass
class LoggingConfig:
    log_interval: int = 1
    """Print one console line every N steps (from the last pipeline stage)."""
    tensorboard_dir: str | None = None
    """TensorBoard folder; null = <checkpoint.dir>/tensorboard."""
    megatron_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "WARNING"
    """Level of megatron-core's own loggers (INFO shows its parameter and dataset reports)."""


@dataclass
class CheckpointConfig:
    dir: str = "runs/tiny"
    """Run folder: checkpoints (iter_NNNNNNN/), the latest-pointer file, tensorboard, caches."""
    save_interval: int = 20
    """Save every N steps (0 = only at the end)."""
    keep_last: int = 2
    """Keep the newest N checkpoints (0 = keep all)."""
    resume: bool = True
    """Continue from the newest complete checkpoint in dir, if any."""
    load: str | None = None
    """Start from this checkpoint's weights (another run or an HF import); ignored on resume,
    but the folder must exist (see data.tokenizer)."""
    load_changes: list | None = None
    """Model fields this run sets differently from the checkpoint.load weights on purpose, e.g.
    [model.rope_scaling_factor, model.max_position_embeddings] for a context extension; any other
    difference in a field that changes the function computed is an error
    (training/checkpoint.py check_same_model)."""


@dataclass
class OmniConfig:
    phase: int = 3
    """Training phase of the plan (1–6)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distill: DistillConfig = field(default_factory=lambda: DistillConfig())
    """Phase-4 distillation from a dense teacher (defined at the end of this file)."""
    dpo: DpoConfig = field(default_factory=lambda: DpoConfig())
    """Phase-6 preference training (defined at the end of this file)."""
    rl: RlConfig = field(default_factory=lambda: RlConfig())
    """Phase-6 reinforcement learning, GRPO (defined at the end of this file)."""


@dataclass
class SparseAttentionConfig:
    """InfLLM-V2 layers ('S' in model.layer_pattern). Defaults: MiniCPM4 / MiniCPM-SALA."""

    dense_len: int = 8192
    """A sequence with fewer tokens attends densely; longer ones attend block-sparse."""
    block_size: int = 64
    """Key block length (power of two >= 16, multiple of kernel_stride)."""
    topk: int = 64
    """Key blocks each query block picks by score, besides the forced init and local blocks."""
    init_blocks: int = 1
    """First blocks of each sequence, always attended."""
    local_blocks: int = 32
    """Most recent blocks (the query's own included), always attended."""
    kernel_size: int = 32
    """Mean-pooling window of the compressed keys that score the blocks."""
    kernel_stride: int = 16
    """Stride of that pooling (divides kernel_size and block_size)."""
    output_gate: bool = True
    """o = o_proj(attn * sigmoid(x W_gate)); false keeps exactly the dense layer's parameters."""


@dataclass
class LinearAttentionConfig:
    """Lightning layers ('L' in model.layer_pattern)."""

    num_query_groups: int | None = None
    """Key/value heads; null = model.num_attention_heads (one per query head, as in SALA)."""
    slopes: str = "alibi"
    """Per-head decay: alibi (s_h = 2^(-8(h+1)/H) in every layer) or minimax (also scaled by
    1 - l/(L-1) over the L linear layers: deeper layers forget more slowly)."""
    output_gate: bool = True
    """o = o_proj(RMSNorm(attn) * sigmoid(x W_gate)); false drops the gate."""
    chunk_size: int = 64
    """Tokens per chunk of the Triton kernel (power of two >= 16)."""


@dataclass
class OmniModelConfig:
    """The omni model (models/omni/): vision and audio encoders with projectors around the LLM.
    ``model.omni: null`` keeps the text-only LLM. Defaults are the ``tiny`` preset
    (config/presets.py OMNI_PRESETS; ``plan`` is the training plan's shapes)."""

    preset: str = "tiny"
    """Preset the other fields start from: tiny or plan."""
    vision: Literal["tiny", "siglip-so400m-patch14-384"] = "tiny"
    """Vision tower shapes (config/encoders.py VISION_PRESETS)."""
    vision_overrides: dict | None = None
    """Fields of the vision preset to change, e.g. {image_size: 448} (VisionEncoderConfig)."""
    audio: Literal["tiny", "whisper-medium"] = "tiny"
    """Audio encoder shapes (config/encoders.py AUDIO_PRESETS)."""
    audio_overrides: dict | None = None
    """Fields of the audio preset to change, e.g. {num_mel_bins: 80, max_source_positions: 1500}
    (AudioEncoderConfig; max_source_positions / 50 = the longest clip in seconds)."""
    vision_projector: Literal["resampler", "mlp"] = "resampler"
    """resampler (3D-Resampler: image_tokens queries per image and per package of frames) or mlp
    (2-layer MLP: one token per patch, each frame its own package)."""
    audio_projector: Literal["conv_gmlp", "mlp"] = "conv_gmlp"
    """conv_gmlp (4x downsampling, 80 ms tokens) or mlp (one token per encoder frame, 20 ms)."""
    image_tokens: int = 4
    """LLM tokens per image and per video package with the resampler (its queries; a square,
    e.g. 64 = 8 x 8). The mlp projector emits one token per patch instead."""
    frames_per_package: int = 2
    """Video frames the resampler compresses jointly (6 in the plan)."""
    resampler_heads: int = 4
    """Attention heads of the resampler (its width is model.hidden_size)."""
    projector_hidden_size: int | None = None
    """Hidden width of the mlp and conv_gmlp projectors; null = the LLM hidden size."""
    max_video_frames: int = 64
    """Most frames per video (1 fps sampling); longer videos are an error."""
    tmrope: bool = True
    """3-D TMRoPE positions ([b, 3, s] ids); false = plain 1-D RoPE."""
    mrope_sections: list | None = None
    """(temporal, height, width) frequency pairs of the head dim, summing to head_dim / 2;
    null = Qwen2.5-Omni's 1:1.5:1.5 split ((16, 24, 24) at head_dim 128)."""
    contrastive_weight: float = 0.0
    """Weight of the vision-audio contrastive loss (OmniAlignNet-style InfoNCE on the pooled
    projector outputs of samples with both video and audio); 0.1-0.2 in phase 1, 0 = off."""
    contrastive_temperature: float = 0.07
    """Softmax temperature of that loss."""


@dataclass
class MultimodalDataConfig:
    """Omni training data (megatron_omni/data/multimodal/loader.py): prepared folders per mix
    modality, mixed by a schedule, expanded and packed into data.seq_length rows."""

    text: list = field(default_factory=list)
    """Text sources: indexed-binary prefixes (data_prep/preprocess_text.py) or prepared folders."""
    image_text: list = field(default_factory=list)
    """Prepared folders (holding manifest.json) of image captions / interleaved documents."""
    video: list = field(default_factory=list)
    """Prepared folders of video captions."""
    audio: list = field(default_factory=list)
    """Prepared folders of audio transcripts."""
    cross_modal: list = field(default_factory=list)
    """Prepared folders mixing modalities (videos with their audio track, conversations)."""
    valid: dict = field(default_factory=dict)
    """Held-out sources per mix modality, {text: [...], image_text: [...], audio: [...], ...}
    (the keys of the sources above), for validation at training.eval_interval: each modality's
    first training.eval_steps global batches of them, the same ones each time, logged as
    validation loss/<modality> beside their token-weighted total; empty = no omni validation
    (eval_interval must be 0)."""
    schedule: dict | list | None = None
    """The mix, as config/mixes.py Schedule.from_config reads it: {phase: 3}, {mix: {text: 0.4, ...}},
    {stages: [{start_step, mix, name}, ...]}, {progressive: true | [start steps]}; null = the
    mix of the run's phase."""
    seed: int | None = None
    """Seed of the mix and epoch shuffles; null = training.seed."""
    packing: bool = True
    """Several samples per row (cu_seqlens); false = one sample per row, padded."""
    tmrope: bool = True
    """TMRoPE position ids [b, 3, s]; false = 1-D positions [b, s]."""
    image_size: int = 384
    """Square input of the vision tower (SigLIP 384)."""
    image_backend: Literal["pil", "dali", "auto"] = "pil"
    """Image decoding: pil, dali or auto (DALI when installed)."""
    n_mels: Literal[80, 128] = 80
    """Log-mel bins: 80 (Whisper medium) or 128 (large-v3)."""
    pad_audio_to_30s: bool = True
    """Whisper's fixed 3000 mel frames per clip; false keeps each clip's own length."""
    max_video_frames: int = 16
    """Frames kept per video, spread evenly over the stored ones."""
    strict: bool = False
    """Stop at the first bad sample with an error naming shard and key (else skip and count)."""
    num_workers: int = 0
    """DataLoader worker processes per rank."""


@dataclass
class DistillConfig:
    """HALO-style distillation (phase 4): a frozen dense teacher teaches the hybrid student
    (checkpoint.load, usually from launch/convert_dense_to_hybrid.py), which trains only
    training.trainable (e.g. [linear_attention] first). Per token, with the loss mask:
    kl_weight · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) + hidden_mse_weight ·
    MSE(final hidden states) + lm_weight · LM cross-entropy, summed and divided by the global
    token count like the LM loss. Needs phase 4 and parallel.pp=1."""

    teacher: str | None = None
    """The teacher's run or checkpoint folder (built from its own saved config, all dense, in
    this run's parallel layout; it must exist, see data.tokenizer); null = no distillation
    (plain LM training)."""
    temperature: float = 1.0
    """Softmax temperature T of both teacher and student logits (> 0)."""
    kl_weight: float = 1.0
    """Weight of the T²-scaled KL divergence to the teacher."""
    hidden_mse_weight: float = 0.0
    """Weight of the mean squared error between the final (normed) hidden states; needs the
    teacher's hidden_size to equal the student's."""
    lm_weight: float = 0.0
    """Weight of the student's own LM cross-entropy on the labels."""


@dataclass
class DpoConfig:
    """Phase-6 preference training (DPO; training/dpo.py, docs/dpo.md) of the omni model on
    prepared preference pairs (data_prep/multimodal/preferences.py), listed in the one modality
    of data.multimodal.schedule. training.micro_batch_size and global_batch_size count rows: two
    per pair. Per pair, with h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))
    (log-probs summed over the response's target tokens): sigmoid loss
    −(1−ε)·log σ(β·h) − ε·log σ(−β·h), or IPO (h − 1/(2β))²; plus sft_weight times the chosen
    response's mean token NLL. Averaged over the global batch's pairs. Exactly one of
    reference and reference_logprobs gives π_ref."""

    beta: float = 0.1
    """β: the strength of the KL constraint to the reference (> 0)."""
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    """sigmoid (DPO) or ipo."""
    label_smoothing: float = 0.0
    """ε of conservative DPO: the chance a label is flipped, in [0, 0.5); sigmoid only."""
    sft_weight: float = 0.0
    """Weight of the chosen response's mean token NLL added to each pair's loss (>= 0)."""
    reference: str | None = None
    """The reference model's run or checkpoint folder: built like this run's model (its config
    must match) in this run's layout, frozen, run forward-only before each step."""
    reference_logprobs: str | None = None
    """Name of the reference log-prob table stored beside each preference folder (written by
    launch/precompute_ref_logprobs.py), e.g. ref_logprobs.json; null = use reference."""


@dataclass
class RlConfig:
    """Phase-6 GRPO (rl/grpo.py, training/grpo.py, docs/grpo.md): every rl.inner_steps optimizer
    steps the policy generates rl.group_size responses to each of rl.prompts_per_step prompts
    (the rollout batch: training.global_batch_size rows, one response per row of data.seq_length
    tokens), each prompt in short or long reasoning mode; the responses are scored
    (rl/rewards.py), advantages normalised within each prompt's group, and the clipped-ratio
    loss with a k3 KL penalty to the frozen reference is averaged over the response tokens of
    the rollout batch. ``--phase 6`` runs GRPO when rl.grpo is true, else DPO (the dpo
    section)."""

    grpo: bool = False
    """Run GRPO in phase 6 (instead of DPO)."""
    prompts: str | None = None
    """A jsonl file of prompt records {prompt, answer, reasoning_mode?} (docs/grpo.md: prompt a
    string, the user turn, or a conversation prefix of turns {from, value}); null = the
    synthetic verifiable task, two-digit addition (rl/prompts.py), seeded by training.seed."""
    prompts_per_step: int = 4
    """Prompts per rollout batch over all data-parallel ranks (a multiple of the DP size: each
    prompt's group stays on one rank)."""
    group_size: int = 4
    """G: responses sampled per prompt (>= 2; advantages are normalised within the group)."""
    long_ratio: float = 0.5
    """Share of prompts rolled out in long reasoning mode (the rest short), unless a record
    names its reasoning_mode; 0.5 = the plan's 50:50."""
    max_new_tokens_short: int = 256
    """Most generated tokens of a short-mode response."""
    max_new_tokens_long: int = 2048
    """Most generated tokens of a long-mode response."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts (> 0). The importance ratio's log-probs are the
    policy's own at temperature 1 (rl/grpo.py)."""
    top_p: float = 1.0
    """Nucleus-sampling mass of the rollouts, in (0, 1]."""
    rewards: dict = field(default_factory=lambda: {"accuracy": 1.0, "format": 0.5, "repetition": 0.5})
    """Weight of each reward function (rl/rewards.py REWARDS: accuracy, format, repetition); a
    response's reward is the weighted sum of the listed ones."""
    repetition_ngram: int = 4
    """n of the repetition penalty's token n-grams (>= 1)."""
    advantage_eps: float = 1e-6
    """Added to the group's reward std before dividing (> 0)."""
    clip_low: float = 0.2
    """The importance ratio is clipped to [1 - clip_low, 1 + clip_high] (PPO's epsilon)."""
    clip_high: float = 0.2
    """Upper clip range (DAPO's clip-higher uses e.g. 0.28)."""
    kl_coef: float = 0.04
    """Coefficient of the k3 KL penalty to rl.reference (>= 0; 0 = no reference model)."""
    reference: str | None = None
    """The frozen reference model's run or checkpoint folder (usually the run's checkpoint.load),
    built as this run's model in its layout; required when kl_coef > 0."""
    inner_steps: int = 1
    """Optimizer steps on each rollout batch before the next one is generated (>= 1); each
    takes the whole batch against the rollout policy's log-probs."""
