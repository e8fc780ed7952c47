"""Parameters per group of the model one rank builds, at full 8B/32B scale: megatron's parallel
state over a fake process group (no communication; this process plays the first TP rank of the
requested pipeline stage), the model built on the meta device (shapes only, no memory).

    python tests/plan/meta_counts.py '[[overrides...], stage], ...'   -> JSON list of {group: n}
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore


def keep_on_meta(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Tensor.cuda here: megatron moves the last stage's copy of a tied embedding to CUDA before
    its (fake) all-reduce; a meta tensor stays where it is."""
    return tensor


def rank_counts(overrides: list[str], stage: int) -> dict[str, int]:
    from megatron.core import parallel_state as ps

    from megatron_omni.config import load_config
    from megatron_omni.models.llm.model import build_llm
    from megatron_omni.models.omni.model import OmniModel
    from megatron_omni.training.freeze import parameter_groups

    cfg = load_config(None, overrides)
    p = cfg.parallel
    dist.init_process_group("fake", rank=stage * p.tp, world_size=p.tp * p.pp, store=FakeStore())
    vpp = p.vpp or 1
    ps.initialize_model_parallel(p.tp, p.pp, vpp if vpp > 1 else None, create_gloo_process_groups=False)
    counts: dict[str, int] = {}
    for chunk in range(vpp):  # the trainer's chunks (training/trainer.py build_model)
        vp_stage = chunk if vpp > 1 else None
        with torch.device("meta"):
            model = (OmniModel(cfg, cfg.model.vocab_size, {"image": 1, "video": 2, "audio": 3}, vp_stage)
                     if cfg.model.omni else build_llm(cfg, cfg.model.vocab_size, vp_stage=vp_stage))
        params = dict(model.named_parameters())
        assert all(t.is_meta for t in params.values())
        for name, group in parameter_groups(model).items():
            counts[group] = counts.get(group, 0) + params[name].numel()
    ps.destroy_model_parallel()
    dist.destroy_process_group()
    return counts


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    torch.Tensor.cuda = keep_on_meta
    print(json.dumps([rank_counts(o, s) for o, s in json.loads(sys.argv[1])]))
