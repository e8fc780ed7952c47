"""HALO-style distillation (phase 4): a frozen dense teacher, the hybrid student being trained.

Per token t, with the loss mask m_t, temperature T and weights from ``distill:``::

    loss_t = kl_weight · T² · KL(softmax(z_t^teacher / T) ‖ softmax(z_t^student / T))
           + hidden_mse_weight · mean_h (h_t^student − h_t^teacher)²     final normed hidden states
           + lm_weight · CE(z_t^student, label_t)

summed over tokens like the LM loss (training/step.py's loss_func: megatron divides by the
global token count). The logits are vocab-parallel under TP: each rank holds V/TP columns, so
the softmax max and normaliser and the KL sum are all-reduced over the TP group. Every TP rank
holds the whole loss: the KL sum's backward is the identity, while the normaliser's gradient is
all-reduced too (each rank's graph holds only its own shard's terms of it). Under context
parallelism each rank scores its own tokens. The teacher is built from its checkpoint's saved
config (all dense) in this run's TP/CP layout, loaded, set to eval mode and run under no_grad;
it has no optimizer. Pipeline parallelism is refused (config/validate.py): the teacher would
need its own pipeline schedule.

With the omni model (model.omni) the teacher is the dense omni checkpoint, encoders and
projectors included: both models read the same OmniBatch (media, TMRoPE ids), each merges its
own media tokens into its sequence, and the KL, hidden-state and LM terms are taken over every
position of that merged sequence (placeholder positions carry media tokens whose loss mask is
0). The teacher must expand media to the student's token counts (the data path expanded the
placeholders once) and use the same positions (model.omni.tmrope); its contrastive loss is off.
The reported loss is also split by mix modality (loss/<m>, as training/step.py does).
"""
from __future__ import annotations

import copy
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel import (copy_to_tensor_model_parallel_region,
                                           gather_from_sequence_parallel_region,
                                           reduce_from_tensor_model_parallel_region,
                                           vocab_parallel_cross_entropy)
from megatron.core.transformer.module import Float16Module
from megatron.core.utils import unwrap_model

from megatron_omni import platform
from megatron_omni.config import ConfigError, OmniConfig, config_from_dict, encoders
from megatron_omni.contract.batch import OmniBatch
from megatron_omni.models.llm.model import build_llm, params_dtype
from megatron_omni.models.omni.model import OmniModel
from megatron_omni.training import checkpoint
from megatron_omni.training.step import local_batch, loss_func, omni_local_batch, omni_loss_func


def vocab_parallel_log_softmax(logits: torch.Tensor, temperature: float,
                               group: dist.ProcessGroup | None) -> torch.Tensor:
    """log softmax(logits / T) over a vocabulary split along the last dim across `group` (this
    rank's columns in, this rank's columns out; float32)."""
    x = logits.float() / temperature
    shift = x.detach().max(dim=-1, keepdim=True).values
    if group is not None and group.size() > 1:
        dist.all_reduce(shift, op=dist.ReduceOp.MAX, group=group)
    x = x - shift
    norm = x.exp().sum(dim=-1, keepdim=True)
    if group is not None and group.size() > 1:
        # every shard's output depends on every shard's partial sum, and each rank's backward
        # sees only its own shard's terms: all-reduce forward (reduce_from) and backward (copy_to)
        norm = copy_to_tensor_model_parallel_region(
            reduce_from_tensor_model_parallel_region(norm, group), group)
    return x - norm.log()


def vocab_parallel_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Per-token KL(softmax(teacher / T) ‖ softmax(student / T)) of vocab-parallel logits
    [..., V/TP] (the same on every rank of `group`); differentiable in the student logits."""
    log_q = vocab_parallel_log_softmax(student_logits, temperature, group)
    with torch.no_grad():
        log_p = vocab_parallel_log_softmax(teacher_logits, temperature, group)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    if group is not None and group.size() > 1:
        kl = reduce_from_tensor_model_parallel_region(kl, group)
    return kl


def _batch_reading(omni) -> dict:
    """What an omni model of this model.omni reads from the batch as the data path made it."""
    return {"media token counts": encoders.media_tokens(omni), "model.omni.tmrope": omni.tmrope,
            "image size": encoders.vision_config(omni).image_size,
            "mel bins": encoders.audio_config(omni).num_mel_bins}


def _check_omni_teacher(cfg: OmniConfig, teacher: OmniConfig) -> None:
    """An omni student needs an omni teacher that reads the student's batches as they are."""
    source = f"distill.teacher={cfg.distill.teacher}"
    if teacher.model.omni is None:
        raise ConfigError(f"{source} is the text-only LLM but model.omni is set: the teacher must "
                          "see the media too; give the dense omni checkpoint as the teacher")
    its, mine = _batch_reading(teacher.model.omni), _batch_reading(cfg.model.omni)
    differ = [f"{name}: teacher {its[name]} vs this run {mine[name]}" for name in mine if its[name] != mine[name]]
    if differ:
        raise ConfigError(f"{source} cannot read this run's omni batches (placeholders expanded and "
                          "media sized for model.omni): " + "; ".join(differ) + "; give a teacher "
                          "with the student's model.omni encoders and projectors")


def teacher_config(cfg: OmniConfig, saved: dict) -> OmniConfig:
    """The teacher's config: its checkpoint's own (model), this run's parallel layout, precision,
    backend and packing; every layer dense. With a text student an omni checkpoint's LLM alone
    is the teacher."""
    teacher = config_from_dict(saved)
    if set(teacher.model.layer_types()) != {"D"}:
        raise ConfigError(f"distill.teacher={cfg.distill.teacher} is a hybrid model "
                          f"(layer_pattern={teacher.model.layer_pattern!r}); give a dense "
                          "(all-D) checkpoint as the teacher")
    if cfg.model.omni is None:
        teacher.model.omni = None
    else:
        _check_omni_teacher(cfg, teacher)
        teacher.model.omni.contrastive_weight = 0.0
    teacher.parallel = copy.deepcopy(cfg.parallel)
    teacher.parallel.modality_decoupled = False  # the one-stage teacher encodes its own media
    teacher.training.precision = cfg.training.precision
    teacher.training.recompute = None
    teacher.model.backend = cfg.model.backend
    teacher.data.packed = cfg.data.packed
    teacher.model.attention_dropout = teacher.model.hidden_dropout = 0.0
    return teacher


class Distiller:
    """The frozen teacher and megatron's forward_step_func for the distillation loss."""

    def __init__(self, cfg: OmniConfig, student: list, vocab_size: int):
        d = cfg.distill
        self.settings = d
        source = checkpoint.resolve(d.teacher)
        common = checkpoint.read_common(source)
        tcfg = teacher_config(cfg, common["config"])
        checkpoint.check_same_model(common, tcfg, vocab_size, source)  # the vocabulary
        if d.hidden_mse_weight and tcfg.model.hidden_size != cfg.model.hidden_size:
            raise ConfigError(
                f"distill.hidden_mse_weight={d.hidden_mse_weight} needs the teacher's hidden size "
                f"({tcfg.model.hidden_size}) to equal model.hidden_size={cfg.model.hidden_size}; "
                "set distill.hidden_mse_weight=0")
        if tcfg.model.omni is not None:  # the student's placeholder ids steer the merge
            teacher = OmniModel(tcfg, vocab_size, unwrap_model(student[0]).placeholder_ids)
        else:
            teacher = build_llm(tcfg, vocab_size)
        teacher = platform.to_device(teacher)
        if params_dtype(tcfg) != torch.float32:  # as the student: bf16 weights, fp32 logits
            teacher = Float16Module(teacher.config, teacher)
        checkpoint.load_checkpoint(source, [teacher])
        teacher.eval()
        teacher.requires_grad_(False)
        self.teacher = teacher
        self.hidden: dict[str, torch.Tensor] = {}
        for name, model in (("teacher", teacher), ("student", student[0])):
            inner = unwrap_model(model)
            getattr(inner, "llm", inner).decoder.register_forward_hook(partial(self._keep_hidden, name))
        self.sequence_parallel = cfg.parallel.sequence_parallel
        self.tp_group = ps.get_tensor_model_parallel_group()

    def _keep_hidden(self, name: str, module, args, output) -> None:
        self.hidden[name] = output

    def _hidden_mse(self) -> torch.Tensor:
        """Per-token mean squared error of the final hidden states [b, s] (gathered from the
        sequence-parallel split; each rank's loss is whole, so the backward only splits)."""
        student, teacher = self.hidden.pop("student"), self.hidden.pop("teacher")
        mse = (student.float() - teacher.float()).pow(2).mean(dim=-1)  # [s(/tp), b]
        if self.sequence_parallel:
            mse = gather_from_sequence_parallel_region(
                mse, tensor_parallel_output_grad=False, group=self.tp_group)
        return mse.transpose(0, 1)

    def forward_step(self, data_iterator, model):
        """megatron's forward_step_func: the teacher and the student on one micro-batch (text,
        or an OmniBatch: logits of the merged sequence); the output is the per-token weighted
        loss [b, s], reported with its parts."""
        d = self.settings
        batch, device = next(data_iterator), next(model.parameters()).device
        if isinstance(batch, OmniBatch):
            batch, tokens, position_ids, labels, loss_mask, modality, packed = omni_local_batch(batch, device)
            inputs = {"batch": batch, "packed_seq_params": packed}
            report = partial(omni_loss_func, loss_mask, modality)
        else:
            tokens, position_ids, labels, loss_mask, packed = local_batch(batch, device)
            inputs = {"packed_seq_params": packed}
            report = partial(loss_func, loss_mask)
        with torch.no_grad():
            teacher_logits = self.teacher(tokens, position_ids, None, **inputs)
        student_logits = model(tokens, position_ids, None, **inputs)  # [b, s, V/tp]
        parts = {
            "kl": vocab_parallel_kl(student_logits, teacher_logits, d.temperature, self.tp_group),
            "mse": self._hidden_mse(),
            # megatron's cross-entropy works in place on the logits it is given: a copy
            "lm": vocab_parallel_cross_entropy(student_logits.float().clone(), labels),
        }
        output = (d.kl_weight * d.temperature ** 2 * parts["kl"]
                  + d.hidden_mse_weight * parts["mse"] + d.lm_weight * parts["lm"])
        return output, partial(distill_loss_func, report, loss_mask, parts)


def distill_loss_func(report_loss, loss_mask: torch.Tensor, parts: dict, output_tensor: torch.Tensor):
    """``report_loss`` (loss_func, or omni_loss_func with its per-modality losses, bound to the
    micro-batch) of the weighted loss, also reporting each part's [sum, tokens]."""
    loss_sum, num_tokens, report = report_loss(output_tensor)
    for name, values in parts.items():
        report[name] = loss_func(loss_mask, values.detach())[2]["loss"]
    return loss_sum, num_tokens, report
