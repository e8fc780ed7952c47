"""Precompute the reference log-probs of preference pairs (phase 6, training/dpo.py), once, so
that DPO runs without a frozen reference model:

    torchrun --nproc_per_node N launch/precompute_ref_logprobs.py --config FILE \\
        --reference RUN_OR_CHECKPOINT [--name ref_logprobs.json] [--set a.b=c ...]

The config is the DPO run's (its data, model and parallel layout; any TP/PP/DP). The reference
model is built from --reference in that layout and run forward-only over every pair of the
preference folders once, in stored order; each folder gets `<folder>/<name>`:
{"reference": the checkpoint, "pairs": {sample key: [chosen, rejected]}} (summed log-probs of
the responses' target tokens), written under a temporary name and moved into place. Train with
``--set dpo.reference_logprobs=<name>`` (and dpo.reference=null).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="the DPO run's YAML config")
    parser.add_argument("--reference", required=True, help="the reference model's run or checkpoint folder")
    parser.add_argument("--name", default="ref_logprobs.json", help="file name beside each folder (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=C")
    args = parser.parse_args(argv)
    from megatron_omni import platform

    platform.prepare_process()
    from megatron_omni.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, [*args.overrides, "phase=6", f"dpo.reference={args.reference}",
                                        "dpo.reference_logprobs=null"])
        write_tables(cfg, args.name)
    except ConfigError as err:
        if os.environ.get("RANK", "0") == "0":  # every rank finds it: report once
            print(f"config error: {err}", file=sys.stderr)
        return 2
    return 0


def write_tables(cfg, name: str) -> None:
    """Run the reference over every pair once and write each folder's table (collective)."""
    import torch
    from megatron.core import parallel_state as ps

    from megatron_omni.config import encoders
    from megatron_omni.config.mixes import Schedule
    from megatron_omni.config.validate_omni import schedule_config
    from megatron_omni.contract.media import PLACEHOLDERS
    from megatron_omni.data.multimodal.pairs import build_pair_loader
    from megatron_omni.data.sample_format import Manifest
    from megatron_omni.data.tokenizer import load_tokenizer
    from megatron_omni.training.dpo import DPO
    from megatron_omni.training.trainer import init_parallel
    from omni_data_prep.cli_io import atomic_file

    dp = init_parallel(cfg)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    vocab_size = cfg.model.vocab_size or tokenizer.vocab_size
    dpo = DPO(cfg, vocab_size, {k: tokenizer.special_ids[t] for k, t in PLACEHOLDERS.items()})
    (modality,) = Schedule.from_config(schedule_config(cfg)).modalities
    folders = getattr(cfg.data.multimodal, modality)
    pairs = sum(Manifest.load(f).totals()["counts"]["samples"] for f in folders)
    t = cfg.training
    steps = -(-pairs // (t.global_batch_size // 2))
    loader = build_pair_loader(cfg, tokenizer, encoders.media_tokens(cfg.model.omni), 0,
                               ps.get_data_parallel_rank(), dp, shuffle=False, steps=steps)
    per_step = t.global_batch_size // (t.micro_batch_size * dp)
    found: dict[tuple[int, str], list[float]] = {}
    for _ in range(steps):
        batches = list(itertools.islice(loader, per_step))
        dpo.prepare(batches)
        if ps.is_pipeline_last_stage(ignore_virtual=True):
            for batch in batches:
                values = batch.reference_logps.double().view(-1, 2).tolist()
                found.update(zip(batch.pairs, values))
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, found)
    if torch.distributed.get_rank() == 0:
        merged = {k: v for part in gathered for k, v in part.items()}
        for i, folder in enumerate(folders):
            table = {key: v for (f, key), v in sorted(merged.items()) if f == i}
            with atomic_file(Path(folder) / name) as tmp:
                tmp.write_text(json.dumps({"reference": cfg.dpo.reference, "pairs": table}) + "\n")
            print(f"wrote {len(table)} pairs to {Path(folder) / name}")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
