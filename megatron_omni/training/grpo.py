"""GRPO in phase 6 (docs/grpo.md): the rollout batch of each rl.inner_steps optimizer steps, its
rewards and advantages, the frozen reference's log-probs, and megatron's forward_step_func of the
loss (rl/grpo.py).

Every rl.inner_steps steps each data-parallel rank takes its rl.prompts_per_step / DP prompts of
the run's sequence (prompt j of the run is record j mod n of rl.prompts, or of the synthetic
addition task), picks each prompt's reasoning mode (rl/prompts.py pick_mode), and samples
rl.group_size responses per prompt with the policy in its training layout (rl/rollout.py
generate: one call per mode, max_new_tokens of the mode, stop at the end-of-turn token). Each
response is scored (rl/rewards.py), the advantages normalised within its prompt's group (all on
this rank), and the rows (prompt + response) become micro-batches of
training.micro_batch_size; the reference model, when rl.kl_coef > 0, runs forward-only over them
once. The next rl.inner_steps optimizer steps train on those micro-batches.
"""
from __future__ import annotations

import time
from functools import partial

import torch
from megatron.core import parallel_state as ps

from megatron_omni.config import ConfigError, OmniConfig
from megatron_omni.rl.grpo import (Rollout, forward_logits, group_advantages, grpo_loss_func,
                                   logprobs_loss_func, rollout_batch)
from megatron_omni.rl.prompts import addition_records, load_prompts, pick_mode, prompt_ids
from megatron_omni.rl.rewards import END_OF_TURN, Response, score
from megatron_omni.training.dpo import build_reference
from megatron_omni.training.step import run_schedule

MODES = ("short", "long")
SYNTHETIC_PROMPTS = 10_000
"""Records of the synthetic addition task (rl.prompts null)."""


class GRPO:
    """The reference, the prompts and the current rollout batch of a GRPO run."""

    def __init__(self, cfg: OmniConfig, tokenizer, vocab_size: int, placeholder_ids: dict[str, int]):
        self.cfg, self.settings, self.tokenizer = cfg, cfg.rl, tokenizer
        r = cfg.rl
        self.records = (load_prompts(r.prompts) if r.prompts is not None
                        else addition_records(SYNTHETIC_PROMPTS, cfg.training.seed))
        self.reference = (build_reference(cfg, r.reference, vocab_size, placeholder_ids)
                          if r.kl_coef > 0 else None)
        self.placeholders = set(placeholder_ids.values())
        self.batches: list = []
        self.metrics: dict = {}

    def step_batches(self, model, iteration: int, dp_rank: int, dp: int) -> tuple[list, dict]:
        """(micro-batches, rollout metrics) of optimizer step iteration + 1: a fresh rollout batch
        every rl.inner_steps steps (and on a restart), else the current one. Collective over
        the model-parallel group (generation) and the data-parallel group (the metrics)."""
        if iteration % self.settings.inner_steps == 0 or not self.batches:
            start = time.perf_counter()
            self.batches, self.metrics = self._rollout(model, iteration // self.settings.inner_steps,
                                                       dp_rank, dp)
            self.metrics["rl/rollout_s"] = time.perf_counter() - start
            return self.batches, self.metrics
        return self.batches, {**self.metrics, "rl/rollout_s": 0.0}

    def _rollout(self, model, index: int, dp_rank: int, dp: int) -> tuple[list, dict]:
        from megatron_omni.rl.rollout import STOP_EOS, generate

        r, t = self.settings, self.cfg.training
        eos = self.tokenizer.encode(END_OF_TURN)
        if len(eos) != 1:
            raise ConfigError(f"data.tokenizer={self.cfg.data.tokenizer} spells {END_OF_TURN} as {len(eos)} "
                              "tokens; GRPO rollouts stop at it as one token: use a tokenizer that "
                              "holds it as a single (user-defined) token")
        per_rank = r.prompts_per_step // dp
        first = index * r.prompts_per_step + dp_rank * per_rank
        chosen = [(j, self.records[j % len(self.records)]) for j in range(first, first + per_rank)]
        modes = [pick_mode(rec, j, t.seed, r.long_ratio) for j, rec in chosen]
        rows: list = [None] * (per_rank * r.group_size)
        for mode in MODES:
            mine = [k for k, m in enumerate(modes) if m == mode]
            if not mine:
                continue
            prompts = [prompt_ids(chosen[k][1], mode, self.tokenizer) for k in mine for _ in range(r.group_size)]
            new = r.max_new_tokens_long if mode == "long" else r.max_new_tokens_short
            longest = max(len(p) for p in prompts)
            if longest + new > self.cfg.data.seq_length:
                raise ConfigError(f"a {mode}-mode prompt of {longest} tokens and rl.max_new_tokens_{mode}="
                                  f"{new} exceed data.seq_length={self.cfg.data.seq_length}")
            out = generate(model[0], prompts, max_new_tokens=new, temperature=r.temperature, top_p=r.top_p,
                           eos_ids=eos[0], seed=rollout_seed(t.seed, index, dp_rank, mode))
            for n, (ids, mask, logps) in enumerate(zip(out.responses(), out.response_mask.tolist(),
                                                      out.logprobs.tolist())):
                k = mine[n // r.group_size]
                record = chosen[k][1]
                stopped = out.stop_reason[n] == STOP_EOS
                cut = next((i for i, token in enumerate(ids) if token in self.placeholders), None)
                if cut is not None:  # a sampled media placeholder (no media behind it) ends the response
                    ids, stopped = ids[:cut], False
                response = Response(self.tokenizer.decode(ids), ids, record.answer, mode, stopped,
                                    r.repetition_ngram)
                rows[k * r.group_size + n % r.group_size] = (
                    Rollout(prompts[n], ids, mask[:len(ids)], logps[:len(ids)]), mode,
                    score(response, r.rewards))
        totals = torch.tensor([row[2]["total"] for row in rows], dtype=torch.float64)
        advantages = group_advantages(totals, r.group_size, r.advantage_eps)
        mm = self.cfg.data.multimodal
        tmrope = self.cfg.model.omni.tmrope and (mm is None or mm.tmrope)
        size, n_mels = (mm.image_size, mm.n_mels) if mm is not None else (1, 80)
        b = t.micro_batch_size
        batches = [rollout_batch([row[0] for row in rows[i:i + b]], advantages[i:i + b],
                                 self.cfg.data.seq_length, self.tokenizer.pad_id, tmrope, size, n_mels)
                   for i in range(0, len(rows), b)]
        self.prepare(batches)
        return batches, rollout_metrics(rows)

    def prepare(self, batches: list) -> None:
        """The frozen reference's log-probs of each micro-batch's labels (collective over the
        pipeline; on the last stage); nothing to do with rl.kl_coef = 0."""
        if self.reference is None:
            return
        with torch.no_grad():
            run_schedule(self.reference, batches, self.cfg.data.seq_length, self.cfg.training.micro_batch_size,
                         forward_only=True, forward_step_func=self._reference_step)

    def _reference_step(self, data_iterator, model):
        return forward_logits(next(data_iterator), model, partial(logprobs_loss_func, "ref_logps"))

    def forward_step(self, data_iterator, model):
        """megatron's forward_step_func of the policy."""
        return forward_logits(next(data_iterator), model, partial(grpo_loss_func, self.settings))


def rollout_seed(seed: int, index: int, dp_rank: int, mode: str) -> int:
    """The sampling seed of a rollout batch's generate call: the same on every rank of a
    model-parallel group, different per batch, data-parallel rank and mode."""
    return (((seed * 1_000_003 + index) * 1009 + dp_rank) * len(MODES) + MODES.index(mode)) % 2**31


def rollout_metrics(rows: list) -> dict[str, float]:
    """Over the data-parallel group (collective), per mode: reward/<mode>/<term> mean and std
    (term: each reward function and total) and response_length/<mode> mean; and the mode's share
    of the rollouts, all keyed "rl/..."."""
    names = list(rows[0][2])
    stats = torch.zeros(len(MODES), len(names) + 1, 3, dtype=torch.float64)  # count, sum, sum of squares
    for rollout, mode, terms in rows:
        m = MODES.index(mode)
        for i, value in enumerate([terms[n] for n in names] + [len(rollout.response)]):
            stats[m, i] += torch.tensor([1.0, value, value * value], dtype=torch.float64)
    torch.distributed.all_reduce(stats, group=ps.get_data_parallel_group())
    out = {}
    total = stats[:, 0, 0].sum()
    for m, mode in enumerate(MODES):
        count = stats[m, 0, 0]
        out[f"rl/share/{mode}"] = (count / total).item()
        if count == 0:
            continue
        for i, name in enumerate(names):
            mean = stats[m, i, 1] / count
            out[f"rl/reward/{mode}/{name}"] = mean.item()
            out[f"rl/reward/{mode}/{name}_std"] = (stats[m, i, 2] / count - mean ** 2).clamp(min=0).sqrt().item()
        out[f"rl/response_length/{mode}"] = (stats[m, -1, 1] / count).item()
    return out
