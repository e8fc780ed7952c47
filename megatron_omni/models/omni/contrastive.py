"""Vision-audio contrastive alignment (OmniAlignNet-style), an optional phase-1 loss.

Samples holding both a video and audio (sample_modality "cross") give one pair: the mean of the
sample's video projector tokens and the mean of its audio projector tokens, L2-normalised.
With P >= 2 pairs in a micro-batch, a symmetric InfoNCE over the P x P cosine similarities
(divided by the temperature) pulls each sample's two views together and pushes the other
samples' apart; fewer pairs give no loss.

The loss lives on pipeline stage 0 while the language-model loss is computed on the last stage,
so it is attached to the stage-0 activations (``attach``): the forward is unchanged and the
backward adds d(scale * loss), as megatron's MoE auxiliary losses do.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def vision_audio_contrastive(video: torch.Tensor, video_owner: torch.Tensor, audio: torch.Tensor,
                             audio_owner: torch.Tensor, temperature: float) -> torch.Tensor | None:
    """InfoNCE of the samples with both modalities. video [n_v, h] / audio [n_a, h] tokens, and
    the sample number of each token; None when fewer than two samples have both."""
    both = sorted(set(video_owner.tolist()) & set(audio_owner.tolist()))
    if len(both) < 2:
        return None
    v = F.normalize(torch.stack([video[video_owner == s].float().mean(0) for s in both]), dim=-1)
    a = F.normalize(torch.stack([audio[audio_owner == s].float().mean(0) for s in both]), dim=-1)
    logits = v @ a.t() / temperature
    target = torch.arange(len(both), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


class _AttachLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, activations: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(loss)
        return activations.view_as(activations)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (loss,) = ctx.saved_tensors
        return grad, torch.ones_like(loss)


def attach(activations: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """``activations`` unchanged; their backward also back-propagates ``loss`` (gradient 1)."""
    return _AttachLoss.apply(activations, loss)
