"""Loading multimodal training data (the format of megatron_omni/data/sample_format.py).

    features   Whisper-compatible log-mel in torch
    dataset    MultimodalDataset (one prepared folder) and TextDocuments (a text indexed binary)
               -> items with every placeholder expanded to its encoder tokens, bad samples
               skipped and counted per reason
    expand     placeholder expansion (Expander): media positions, labels, loss mask, TMRoPE spans
    mixture    phase data mixes and the progressive modality schedule (MixtureStream)
    packing    several samples per fixed-length row (cu_seqlens, per-sample loss masks) and
               the omni micro-batch (collate -> OmniBatch, docs/omni_batch.md)
    loader     build_omni_loader: data.multimodal -> this DP rank's micro-batches, stats()
"""
