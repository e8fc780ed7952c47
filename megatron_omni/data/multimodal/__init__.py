"""Loading multimodal training data (the format of megatron_omni/data/sample_format.py).

    features   Whisper-compatible log-mel in torch
    dataset    MultimodalDataset: one prepared folder -> the tensors the omni model consumes,
               bad samples skipped and counted per reason
    mixture    phase data mixes and the progressive modality schedule, a pure function of
               (seed, global sample index)
    packing    several samples per fixed-length sequence (cu_seqlens, per-sample loss masks)
               and a DP sampler giving every rank the same number of micro-batches
"""
