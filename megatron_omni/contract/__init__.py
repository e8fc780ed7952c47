"""What the data path and the model agree on, importing nothing else of megatron_omni (only the
standard library and torch), so models, data and data_prep may all import it:

    media       media kinds, placeholders, per-item token counts (MediaTokens)
    projectors  the projector registry: tokens and grid of each vision / audio projector
    tmrope      TMRoPE span types and position ids
    batch       OmniBatch, the omni micro-batch (docs/omni_batch.md)
"""
