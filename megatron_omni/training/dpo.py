"""Preference training (phase 6): DPO, IPO and conservative DPO of the omni model on pairs
(data/multimodal/pairs.py PreferenceBatch: sample 2k chosen, 2k+1 rejected, both in one
micro-batch), against a frozen reference. Contract and formulas: docs/dpo.md, config/schema.py
DpoConfig.

Log-probabilities. On the last pipeline stage the model returns vocab-parallel logits
[b, s, V/TP]; megatron's vocab_parallel_cross_entropy gives −log p(label) per token with the
max, the normaliser and the label's logit all-reduced over the TP group (full logits are never
gathered), and every TP rank holds the whole value. Summed per sample over its loss mask (the
response's assistant tokens: tool results and the prompt are context), they are log π(y | x).

Reference. Either a frozen copy of the model built from dpo.reference in this run's own layout
(TP, PP, VPP: the same model chunks, as the distillation teacher of training/distill.py), run
forward-only through megatron's pipeline schedule over the step's micro-batches before the
policy's step (`prepare`), which writes each batch's reference_logps on the last stage; or the
same values precomputed offline (launch/precompute_ref_logprobs.py) and read by the loader
beside the data. The loss reads only batch.reference_logps, so both give the same loss.

Loss. Per pair (megatron divides by the pair count of the global batch: the loss_func returns
the pair count as its "tokens"): sigmoid −(1−ε)·log σ(β·h) − ε·log σ(−β·h) or IPO
(h − 1/(2β))², h = (π_w − ref_w) − (π_l − ref_l), plus sft_weight times the chosen response's
mean token NLL. Logged: loss, rewards/chosen = β·(π_w − ref_w), rewards/rejected, rewards/accuracy
(chosen reward above rejected), rewards/margin (their difference), each a mean over pairs.
"""
from __future__ import annotations

import copy
from functools import partial

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import Float16Module

from megatron_omni import platform
from megatron_omni.config import OmniConfig
from megatron_omni.config.schema import DpoConfig
from megatron_omni.data.multimodal.pairs import PreferenceBatch
from megatron_omni.models.llm.logprobs import token_logprobs
from megatron_omni.models.llm.model import params_dtype
from megatron_omni.models.omni.model import OmniModel
from megatron_omni.training import checkpoint
from megatron_omni.training.step import run_schedule


def sample_sums(values: torch.Tensor, loss_mask: torch.Tensor, sample_index: torch.Tensor,
                num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of `values` over each sample's target positions, their count), each [num_samples]."""
    weight = (loss_mask * (sample_index >= 0)).reshape(-1).to(values.dtype)
    index = sample_index.reshape(-1).clamp(min=0)
    sums = values.new_zeros(num_samples).index_add(0, index, values.reshape(-1) * weight)
    counts = values.new_zeros(num_samples).index_add(0, index, weight)
    return sums, counts


def preference_loss(policy: torch.Tensor, reference: torch.Tensor, d: DpoConfig
                    ) -> dict[str, torch.Tensor]:
    """Per pair [p] from summed log-probs [2p] (chosen, rejected alternating): "loss" (without
    the SFT term) and the rewards β·(π − ref) of "chosen" and "rejected"."""
    ratio = (policy - reference.to(policy)).view(-1, 2)
    h = ratio[:, 0] - ratio[:, 1]
    if d.loss_type == "ipo":
        loss = (h - 1 / (2 * d.beta)) ** 2
    else:
        loss = -(1 - d.label_smoothing) * F.logsigmoid(d.beta * h) - d.label_smoothing * F.logsigmoid(-d.beta * h)
    rewards = d.beta * ratio.detach()
    return {"loss": loss, "chosen": rewards[:, 0], "rejected": rewards[:, 1]}


def dpo_loss_func(d: DpoConfig, batch: PreferenceBatch, output_tensor: torch.Tensor):
    """megatron's loss_func of a PreferenceBatch's logits: (loss summed over its pairs, pair
    count, report of [sum, pairs] per logged value)."""
    n = len(batch.sample_ids)
    device = output_tensor.device
    mask, index = batch.loss_mask.to(device), batch.sample_index.to(device)
    logp, tokens = sample_sums(token_logprobs(output_tensor, batch.labels.to(device)), mask, index, n)
    parts = preference_loss(logp, batch.reference_logps.to(device), d)
    loss = parts["loss"]
    if d.sft_weight:
        chosen = slice(0, n, 2)
        loss = loss - d.sft_weight * logp[chosen] / tokens[chosen].clamp(min=1)
    pairs = torch.tensor(n // 2, device=device, dtype=torch.int)
    count = pairs.float()
    chosen, rejected = parts["chosen"], parts["rejected"]
    values = {"loss": loss.detach(), "rewards/chosen": chosen, "rewards/rejected": rejected,
              "rewards/accuracy": (chosen > rejected).float(), "rewards/margin": chosen - rejected}
    report = {k: torch.stack([v.sum().float(), count]) for k, v in values.items()}
    return loss.sum(), pairs, report


def reference_loss_func(batch: PreferenceBatch, output_tensor: torch.Tensor):
    """The reference pass's loss_func: keeps the summed log-probs on the batch, reports nothing
    that trains."""
    device = output_tensor.device
    logp, _ = sample_sums(token_logprobs(output_tensor, batch.labels.to(device)),
                          batch.loss_mask.to(device), batch.sample_index.to(device), len(batch.sample_ids))
    batch.reference_logps = logp.detach()
    zero = logp.new_zeros(())
    return zero, torch.tensor(len(batch.sample_ids) // 2, device=device, dtype=torch.int), {
        "reference/logp": torch.stack([logp.detach().sum(), logp.new_tensor(float(len(batch.sample_ids)))])}


def forward_logits(batch: PreferenceBatch, model, loss_func):
    """A PreferenceBatch through this rank's chunk with no labels: logits on the last stage."""
    device = next(model.parameters()).device
    tokens, position_ids = (x.to(device, non_blocking=True) for x in (batch.tokens, batch.position_ids))
    return model(tokens, position_ids, None, batch=batch), partial(loss_func, batch)


def reference_config(cfg: OmniConfig) -> OmniConfig:
    """The reference model's config: this run's, without dropout."""
    ref = copy.deepcopy(cfg)
    ref.model.attention_dropout = ref.model.hidden_dropout = 0.0
    ref.training.recompute = None
    return ref


class DPO:
    """The reference (a frozen model, or the loader's precomputed values) and megatron's
    forward_step_func of the preference loss."""

    def __init__(self, cfg: OmniConfig, vocab_size: int, placeholder_ids: dict[str, int]):
        self.settings = cfg.dpo
        self.seq_length, self.micro_batch_size = cfg.data.seq_length, cfg.training.micro_batch_size
        self.reference = (build_reference(cfg, cfg.dpo.reference, vocab_size, placeholder_ids)
                          if cfg.dpo.reference else None)

    def prepare(self, micro_batches: list[PreferenceBatch]) -> None:
        """Before a step (collective over the pipeline): the frozen reference's summed log-probs
        of every micro-batch, on the last stage. Nothing to do with precomputed values."""
        if self.reference is None:
            return
        with torch.no_grad():
            run_schedule(self.reference, micro_batches, self.seq_length, self.micro_batch_size,
                         forward_only=True, forward_step_func=self._reference_step)

    def _reference_step(self, data_iterator, model):
        return forward_logits(next(data_iterator), model, reference_loss_func)

    def forward_step(self, data_iterator, model):
        """megatron's forward_step_func of the policy."""
        return forward_logits(next(data_iterator), model, partial(dpo_loss_func, self.settings))


def build_reference(cfg: OmniConfig, folder: str, vocab_size: int, placeholder_ids: dict[str, int]) -> list:
    """This rank's chunks of a frozen reference model (dpo.reference, rl.reference), loaded from
    the run or checkpoint `folder`, built as this run's model in its layout."""
    source = checkpoint.resolve(folder)
    rcfg = reference_config(cfg)
    checkpoint.check_same_model(checkpoint.read_common(source), rcfg, vocab_size, source)
    vpp = cfg.parallel.vpp or 1
    chunks = []
    for i in range(vpp):
        module = platform.to_device(OmniModel(rcfg, vocab_size, placeholder_ids, i if vpp > 1 else None))
        if params_dtype(rcfg) != torch.float32:  # as the policy: bf16 weights, fp32 logits
            module = Float16Module(module.config, module)
        chunks.append(module)
    checkpoint.load_checkpoint(source, chunks)
    for chunk in chunks:
        chunk.eval()
        chunk.requires_grad_(False)
    return chunks
