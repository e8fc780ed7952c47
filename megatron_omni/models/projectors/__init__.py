"""Projectors from encoder features to the LLM's hidden size: a 2-layer MLP (mlp.py), the
3D-Resampler for images and video (resampler.py) and the Conv-GMLP audio projector (conv_gmlp.py).

Each class names its entries of the projector registry (contract/projectors.py) in ``layouts``
and builds itself for the omni model with ``for_encoder(omni, encoder, output_size, dtype)``;
``projector_class`` finds the class of an entry."""
from __future__ import annotations

from megatron_omni.contract.projectors import AudioLayout, VisionLayout
from megatron_omni.models.projectors.conv_gmlp import ConvGMLPProjector
from megatron_omni.models.projectors.mlp import MLPProjector
from megatron_omni.models.projectors.resampler import Resampler3D

_CLASSES = {layout: cls for cls in (Resampler3D, MLPProjector, ConvGMLPProjector)
            for layout in cls.layouts}


def projector_class(layout: VisionLayout | AudioLayout) -> type:
    """The projector module implementing a registry entry."""
    return _CLASSES[layout]
