"""The training loop: build everything megatron-core needs, then step, log, evaluate and save.

Read top to bottom: Trainer.__init__ (distributed → parallel state → tokenizer → model →
optimizer → scheduler → checkpoint → data), then Trainer.train.
"""
from __future__ import annotations

import itertools
import logging
import signal
import threading
import time
from pathlib import Path

import torch
from megatron.core import parallel_state as ps, tensor_parallel
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.transformer.module import Float16Module

from megatron_omni import platform
from megatron_omni.config import ConfigError, OmniConfig, config_to_dict, validate
from megatron_omni.config.phases import PHASES, trainable_groups
from megatron_omni.contract.batch import MODALITIES
from megatron_omni.contract.media import PLACEHOLDERS
from megatron_omni.data.multimodal.loader import build_omni_loader, epoch_steps, held_out_config
from megatron_omni.data.text import build_text_datasets, micro_batches
from megatron_omni.data.tokenizer import load_tokenizer
from megatron_omni.models.llm.model import build_llm, padded_vocab_size, params_dtype, transformer_config
from megatron_omni.training import checkpoint
from megatron_omni.config import encoders
from megatron_omni.models.omni.model import OmniModel
from megatron_omni.parallel.modality_decoupled import finalize_grads
from megatron_omni.training.data_stats import DataStats
from megatron_omni.training.freeze import apply_trainable, check_something_trains, group_lr_overrides
from megatron_omni.training.flops import StepFlops, non_padding_tokens
from megatron_omni.training.metrics import StepLogger, setup_logging
from megatron_omni.training.param_counts import model_parameters, projector_parameters
from megatron_omni.training.distill import Distiller
from megatron_omni.training.dpo import DPO
from megatron_omni.training.grpo import GRPO
from megatron_omni.data.multimodal.pairs import build_pair_loader
from megatron_omni.training.step import evaluate, forward_step, train_step
from megatron_omni.training.writer_queue import STOP_SIGNALS

log = logging.getLogger(__name__)


def init_parallel(cfg: OmniConfig) -> int:
    """torch.distributed + megatron parallel state + seeds; returns the data-parallel size."""
    platform.init_distributed()
    dp = validate(cfg, torch.distributed.get_world_size(), check_inputs=True)
    p = cfg.parallel
    ps.initialize_model_parallel(p.tp, p.pp, p.vpp if (p.vpp or 1) > 1 else None, context_parallel_size=p.cp)
    tensor_parallel.model_parallel_cuda_manual_seed(cfg.training.seed)
    return dp


def build_model(cfg: OmniConfig, vocab_size: int,
                placeholder_ids: dict[str, int] | None = None) -> list[DistributedDataParallel]:
    """This rank's model chunks (one per virtual pipeline stage), wrapped in megatron's DDP: the
    omni model when model.omni is set (``placeholder_ids`` from the tokenizer), else the LLM.
    Parameters outside the trainable groups (training.trainable, else the phase's default) are
    frozen first (no DDP buffer, not optimised)."""
    vpp = cfg.parallel.vpp or 1
    tconfig = transformer_config(cfg)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, use_distributed_optimizer=cfg.parallel.distributed_optimizer,
        check_for_nan_in_grad=True)
    chunks, trainable = [], {}
    groups = trainable_groups(cfg.phase, cfg.training.trainable)
    for i in range(vpp):
        vp_stage = i if vpp > 1 else None
        module = (OmniModel(cfg, vocab_size, placeholder_ids, vp_stage) if cfg.model.omni is not None
                  else build_llm(cfg, vocab_size, vp_stage=vp_stage))
        for group, n in apply_trainable(module, groups).items():
            trainable[group] = trainable.get(group, 0) + n
        module = platform.to_device(module)
        if params_dtype(cfg) != torch.float32:
            module = Float16Module(tconfig, module)
        chunks.append(DistributedDataParallel(tconfig, ddp_config, module, disable_bucketing=i > 0))
    counts_per_rank = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(counts_per_rank, trainable)
    check_something_trains(counts_per_rank, groups)
    tconfig = chunks[0].config
    tconfig.finalize_model_grads_func = finalize_grads  # + the decoupled encoders' backward
    tconfig.no_sync_func = [c.no_sync for c in chunks] if vpp > 1 else chunks[0].no_sync
    return chunks


def build_optimizer(cfg: OmniConfig, model):
    t = cfg.training
    dtype = params_dtype(cfg)
    opt_config = OptimizerConfig(
        optimizer="adam", lr=t.lr, min_lr=t.min_lr, weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1, adam_beta2=t.adam_beta2, adam_eps=t.adam_eps, clip_grad=t.clip_grad,
        bf16=dtype == torch.bfloat16, params_dtype=dtype,
        use_distributed_optimizer=cfg.parallel.distributed_optimizer)
    optimizer = get_megatron_optimizer(opt_config, model, group_lr_overrides(opt_config, t.group_lr))
    checkpoint.allow_paramless_ranks(optimizer)
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=t.lr, min_lr=t.min_lr, lr_warmup_steps=t.warmup_steps,
        lr_decay_steps=t.lr_decay_steps or t.train_steps, lr_decay_style=t.lr_decay_style,
        start_wd=t.weight_decay, end_wd=t.weight_decay, wd_incr_steps=t.train_steps,
        wd_incr_style="constant")
    return optimizer, scheduler


def omni_micro_batches(cfg: OmniConfig, tokenizer, consumed_samples: int, dp_rank: int, dp: int):
    """This rank's omni micro-batches (data/multimodal/loader.py), with the media token counts
    of the model config (the same MediaTokens the model checks its encoder outputs against)."""
    return build_omni_loader(cfg, tokenizer, encoders.media_tokens(cfg.model.omni), consumed_samples,
                             dp_rank, dp)


def resolve_schedule(cfg: OmniConfig, tokenizer) -> None:
    """training.num_epochs into train_steps (the steps of that many passes over the omni data)
    and training.warmup_ratio into warmup_steps, in place, before the scheduler is built."""
    t = cfg.training
    if t.num_epochs is not None:
        media_tokens = encoders.media_tokens(cfg.model.omni)
        t.train_steps = epoch_steps(cfg, tokenizer, media_tokens, t.num_epochs)
        log.info("%d epochs of the data: %d steps", t.num_epochs, t.train_steps)
    if t.warmup_ratio is not None:
        decay = t.lr_decay_steps or t.train_steps
        t.warmup_steps = min(round(t.warmup_ratio * decay), decay - 1)  # megatron: warmup < decay
        log.info("warmup_ratio %g: %d warmup steps", t.warmup_ratio, t.warmup_steps)


class Trainer:
    def __init__(self, cfg: OmniConfig):
        self.cfg = cfg
        self.omni = cfg.model.omni is not None
        self.dp = init_parallel(cfg)
        self.phase_name = PHASES[cfg.phase][0]
        setup_logging(torch.distributed.get_rank(), cfg.logging.megatron_log_level)
        self.tokenizer = load_tokenizer(cfg.data.tokenizer)
        self.vocab_size = cfg.model.vocab_size or self.tokenizer.vocab_size
        placeholder_ids = {kind: self.tokenizer.special_ids[text] for kind, text in PLACEHOLDERS.items()}
        resolve_schedule(cfg, self.tokenizer)
        self.model = build_model(cfg, self.vocab_size, placeholder_ids)
        self.optimizer, self.scheduler = build_optimizer(cfg, self.model)
        # phase-4 distillation trains on the teacher's outputs; validation stays the LM loss
        self.forward_step = (Distiller(cfg, self.model, self.vocab_size).forward_step
                             if cfg.distill.teacher else forward_step)
        # phase 6: GRPO on the policy's rollouts (rl.grpo), else the DPO loss against a frozen
        # or precomputed reference
        self.grpo = GRPO(cfg, self.tokenizer, self.vocab_size, placeholder_ids) if cfg.phase == 6 and cfg.rl.grpo else None
        self.dpo = DPO(cfg, self.vocab_size, placeholder_ids) if cfg.phase == 6 and self.grpo is None else None
        for method in (self.dpo, self.grpo):
            if method is not None:
                self.forward_step = method.forward_step
        self.iteration, self.consumed = self._restore()
        t = cfg.training
        num_evals = t.train_steps // t.eval_interval if t.eval_interval else 0
        self.train_data = self.valid_data = None
        if not self.omni:
            self.train_data, self.valid_data = build_text_datasets(
                cfg, self.tokenizer, t.train_steps * t.global_batch_size,
                t.eval_steps * t.global_batch_size if num_evals else 0)
        self.dp_rank = ps.get_data_parallel_rank()
        self.num_micro = t.global_batch_size // (t.micro_batch_size * self.dp)
        is_logger = (ps.is_pipeline_last_stage(ignore_virtual=True)
                     and ps.get_tensor_model_parallel_rank() == 0 and self.dp_rank == 0
                     and ps.get_context_parallel_rank() == 0)
        tb_dir = cfg.logging.tensorboard_dir or str(Path(cfg.checkpoint.dir) / "tensorboard")
        self.logger = StepLogger(is_logger, tb_dir, t.train_steps, torch.distributed.get_world_size())
        self.flops = StepFlops(cfg, padded_vocab_size(self.vocab_size), projector_parameters(self.model))
        self.data_stats = DataStats(cfg)
        self._signalled = False
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                signal.signal(sig, self._on_signal)
        log.info("phase %d (%s): %s, %d ranks (tp=%d pp=%d vpp=%s cp=%d dp=%d)", cfg.phase,
                 self.phase_name, cfg.model.preset, torch.distributed.get_world_size(), cfg.parallel.tp,
                 cfg.parallel.pp, cfg.parallel.vpp, cfg.parallel.cp, self.dp)
        self.logger.parameters(self.iteration, *model_parameters(self.model))  # collective

    def _restore(self) -> tuple[int, int]:
        """(iteration, consumed samples) from the newest checkpoint of this run, or from a given
        starting checkpoint (weights only), or a fresh start."""
        ck = self.cfg.checkpoint
        latest = checkpoint.latest_checkpoint(ck.dir) if ck.resume else None
        if latest is not None:
            checkpoint.check_resumable(checkpoint.read_common(latest), self.cfg, self.vocab_size, latest)
            common = checkpoint.load_checkpoint(latest, self.model, self.optimizer, self.scheduler)
            log.info("resumed from %s (step %d, %d samples consumed)", latest,
                     common["iteration"], common["consumed_samples"])
            return common["iteration"], common["consumed_samples"]
        # megatron's scheduler starts at step 0 (lr = init_lr = 0); we count the step being
        # taken, so warmup step i uses lr * i / warmup_steps and decay reaches min_lr on the last
        # step. (A resumed scheduler already counts it: its saved state is restored as is.)
        self.scheduler.step(increment=1)
        if ck.load is not None:
            source = checkpoint.resolve(ck.load)
            checkpoint.check_same_model(checkpoint.read_common(source), self.cfg, self.vocab_size, source,
                                        allowed=ck.load_changes or [])
            checkpoint.load_checkpoint(source, self.model)
            log.info("initialised weights from %s", source)
        return 0, 0

    def _on_signal(self, signum, frame) -> None:
        self._signalled = True

    def _stop_requested(self) -> bool:
        """True on every rank once any rank got SIGTERM/SIGUSR1 (a scheduler's preemption
        notice): the step in flight finishes, a checkpoint is saved, and training stops."""
        flag = torch.tensor([float(self._signalled)], device=platform.device())
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def _next_global_batch(self, data) -> list:
        return list(itertools.islice(data, self.num_micro))

    def _group_lrs(self) -> dict[str, float]:
        """{"lr/<group>": the learning rate of the step about to run} of training.group_lr's
        groups (megatron's scheduler gives each its own peak and floor: training/freeze.py)."""
        t = self.cfg.training
        return {f"lr/{group}": self.scheduler.get_lr(
                    {"max_lr": float(peak), "min_lr": float(peak) * t.min_lr / t.lr})
                for group, peak in (t.group_lr or {}).items()}

    def save(self, weights_only: bool = False) -> None:
        """Checkpoint the run as it stands (collective); weights_only leaves out the optimizer,
        scheduler and RNG state (e.g. step-0 weights to start other runs from)."""
        ck = self.cfg.checkpoint
        optimizer, scheduler = (None, None) if weights_only else (self.optimizer, self.scheduler)
        path = checkpoint.save_checkpoint(ck.dir, self.iteration, self.model, self.consumed,
                                          config_to_dict(self.cfg), self.vocab_size, optimizer,
                                          scheduler, ck.keep_last)
        log.info("saved %s", path)

    def _validation_sets(self) -> dict:
        """{name: this rank's validation micro-batches}: "loss/<m>" per modality of
        data.multimodal.valid (in MODALITIES order) for the omni model, "loss" for the text one."""
        if self.omni:
            held_out = self.cfg.data.multimodal.valid
            if not held_out:
                raise ConfigError("no validation data: give data.multimodal.valid held-out sources "
                                  "per modality, e.g. {text: [data/held_out/text]}")
            return {f"loss/{m}": omni_micro_batches(held_out_config(self.cfg, m), self.tokenizer, 0,
                                                    self.dp_rank, self.dp)
                    for m in MODALITIES if m in held_out}
        if self.valid_data is None:
            raise ConfigError("no validation data: set training.eval_interval > 0 (and give "
                              "data.valid_blend or a validation share in data.split)")
        return {"loss": micro_batches(self.valid_data, 0, self.cfg, self.dp_rank, self.dp)}

    def validate(self) -> dict[str, float] | None:
        """Per-token mean validation losses over training.eval_steps fixed global batches of
        each validation set, on the last pipeline stage (None elsewhere): {"loss": ...} for the
        text model; for the omni model "loss/<m>" per held-out modality (its own eval_steps
        global batches) and "loss", their token-weighted mean."""
        t = self.cfg.training
        totals = {}
        for name, data in self._validation_sets().items():
            batches = [self._next_global_batch(data) for _ in range(t.eval_steps)]
            totals[name] = evaluate(self.model, batches, self.cfg.data.seq_length, t.micro_batch_size)
        if any(total is None for total in totals.values()):  # not the last pipeline stage
            return None
        if self.omni:  # the held-out modalities together, weighted by their tokens
            totals = {"loss": torch.stack(list(totals.values())).sum(0), **totals}
        return {name: (total[0] / total[1]).item() for name, total in totals.items()}

    def train(self, max_steps: int | None = None) -> dict:
        """Train to training.train_steps (or at most max_steps more steps in this call). Returns
        {"train": {step: loss}, "valid": {step: validate()'s losses}} as seen on this rank
        (filled on the last pipeline stage)."""
        t, ck = self.cfg.training, self.cfg.checkpoint
        if self.grpo is not None:
            data = None  # the rollouts are the data
        elif self.dpo is not None:
            data = build_pair_loader(self.cfg, self.tokenizer, encoders.media_tokens(self.cfg.model.omni),
                                     self.consumed, self.dp_rank, self.dp)
        else:
            data = (omni_micro_batches(self.cfg, self.tokenizer, self.consumed, self.dp_rank, self.dp)
                    if self.omni else micro_batches(self.train_data, self.consumed, self.cfg, self.dp_rank, self.dp))
        history = {"train": {}, "valid": {}}
        end = t.train_steps if max_steps is None else min(t.train_steps, self.iteration + max_steps)
        self.logger.start(self.iteration)
        while self.iteration < end:
            start = time.perf_counter()
            group_lrs, rollout = self._group_lrs(), {}
            if self.grpo is not None:
                batches, rollout = self.grpo.step_batches(self.model, self.iteration, self.dp_rank, self.dp)
            else:
                batches = self._next_global_batch(data)
            if self.dpo is not None:
                self.dpo.prepare(batches)
            metrics = train_step(self.model, self.optimizer, self.scheduler, batches,
                                 self.cfg.data.seq_length, t.micro_batch_size, self.forward_step)
            if rollout:  # GRPO: the rollout's metrics, and the time the step trained
                metrics.update(rollout, **{"rl/train_s": time.perf_counter() - start - rollout["rl/rollout_s"]})
            self.iteration += 1
            self.consumed += t.global_batch_size
            self.data_stats.count(sum(non_padding_tokens(b) for b in batches),
                                  sum(self.flops.of(b) for b in batches))
            # collective: the counts of other ranks reach the logging rank (training/data_stats.py)
            interval = (self.data_stats.collect(data if self.omni else None)
                        if self.iteration % self.cfg.logging.log_interval == 0 else None)
            if "loss" in metrics:
                history["train"][self.iteration] = metrics["loss"]
                self.logger.train(self.iteration, metrics, {"lr": metrics["lr"], **group_lrs},
                                  time.perf_counter() - start, self.consumed, interval)
            if t.eval_interval and self.iteration % t.eval_interval == 0:
                losses = self.validate()
                if losses is not None:
                    history["valid"][self.iteration] = losses
                    self.logger.valid(self.iteration, losses)
            if self._stop_requested():
                self.save()
                log.warning("stopped by signal after step %d; checkpoint saved, resume with the "
                            "same command", self.iteration)
                break
            if (ck.save_interval and self.iteration % ck.save_interval == 0) or self.iteration == t.train_steps:
                self.save()
        self.logger.close()
        return history
