"""Gradients in global layout for the multi-rank parity tests: every parameter's reduced
main_grad written as a weights-only checkpoint (tests read it back with conftest's
checkpoint_tensors, unsharded, whatever the run's TP/PP). Run inside the torchrun runners."""
from pathlib import Path


def save_main_grads(model, cfg, vocab_size: int, folder: Path) -> None:
    """Save each parameter's main_grad (zeros for frozen ones) under folder as iteration 0, then
    put the weights back. Collective over all ranks. Call after the schedule's gradient reduction
    (finalize_model_grads) and before the optimizer step; without the distributed optimizer (its
    reduce-scatter leaves only this rank's shard of main_grad reduced)."""
    import torch

    from megatron_omni.config import config_to_dict
    from megatron_omni.training import checkpoint

    params = [p for chunk in model for p in chunk.module.parameters()]
    weights = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.copy_(p.main_grad if p.requires_grad else torch.zeros_like(p))
    checkpoint.save_checkpoint(folder, 0, model, 0, config_to_dict(cfg), vocab_size)
    with torch.no_grad():
        for p, w in zip(params, weights):
            p.copy_(w)


def save_first_step_grads(trainer, folder: Path) -> None:
    """Make the trainer's first optimizer step save the step's gradients (save_main_grads) first."""
    step = trainer.optimizer.step

    def first_step():
        trainer.optimizer.step = step
        save_main_grads(trainer.model, trainer.cfg, trainer.vocab_size, folder)
        return step()

    trainer.optimizer.step = first_step
