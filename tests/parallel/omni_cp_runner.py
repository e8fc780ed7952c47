"""Run by tests/parallel/test_omni_cp.py under torchrun: several layouts of the tiny omni model in
one launch, each from the same step-0 weights (one per layer pattern) on the same long mixed
micro-batches. Per layout and per step kind (``rows``: one sample per row; ``packed``: several
samples per row, cu_seqlens; on one rank also ``apart``: the packed step's samples one per row),
one forward/backward over the step's micro-batches: the reported
losses ([sum, tokens] of "loss" and of every "loss/<modality>") and every parameter's gradient
(main_grad written into a weights-only checkpoint under <dir>/<name>/grads_<kind>, so the test
reads it in global layout).

    torchrun --nproc_per_node N tests/parallel/omni_cp_runner.py --out DIR/result.json
        [--save-init] --set a.b=c ... --layout NAME=PATTERN,o1,o2 ...

PATTERN is a key of PATTERNS; the step-0 weights of each pattern live in <dir>/init_<PATTERN>.
"""
import argparse
import json
import sys
from pathlib import Path

from megatron_omni import platform

PATTERNS = {
    "dense": ["model.num_layers=2"],
    "hybrid": ["model.num_layers=4", "model.layer_pattern=SLDL", "model.sparse.dense_len=32",
               "model.sparse.block_size=16", "model.sparse.kernel_size=16", "model.sparse.kernel_stride=8",
               "model.sparse.init_blocks=1", "model.sparse.local_blocks=1", "model.sparse.topk=1",
               "model.linear.chunk_size=16"],
}
"""The layer patterns compared: all dense, and every layer type (sparse layers NoPE, the rotary
layers on TMRoPE ids) with samples long enough for the sparse layers to drop blocks."""

ROWS = [[("video", {"video_frames": 16}), ("cross", {})], [("audio", {"audio_frames": 64}), ("image", {})]]
"""The unpacked step: two micro-batches of two rows (one sample each, then padding). The 16-frame
video is 32 LLM tokens from position 3: it spans CP chunks (16 positions at cp=4)."""
PACKED = [[("video", {"video_frames": 16}, 70), ("text", {}, 40)],
          [("cross", {}, 50), ("image", {}, 30), ("audio", {"audio_frames": 64}, 40)]]
"""The packed step: one micro-batch of two rows, each several samples (kind, media, length) back
to back then padding."""


def _ids(tokenizer) -> dict:
    from megatron_omni.contract.media import PLACEHOLDERS

    special = tokenizer.special_ids
    return {"placeholder_ids": {kind: special[text] for kind, text in PLACEHOLDERS.items()},
            "text_ids_from": max(special.values()) + 1}


def rows_batches(cfg, tokenizer) -> list:
    """The unpacked step's micro-batches (docs/omni_batch.md, one sample per row)."""
    from tests.omni_batches import micro_batch

    out = []
    for m, rows in enumerate(ROWS):
        parts = [micro_batch(cfg.model.omni, [kind], cfg.data.seq_length, tokenizer.vocab_size,
                             seed=10 * m + r, **media, **_ids(tokenizer)) for r, (kind, media) in enumerate(rows)]
        out.append(stack_rows(parts, [[p.tokens.shape[1]] for p in parts], packed=False))
    return out


def packed_steps(cfg, tokenizer) -> dict[str, list]:
    """{"packed": [PACKED's rows as one micro-batch], "apart": the same samples one per row (a
    micro-batch per packed row)}; each sample is made by tests/omni_batches.py (its TMRoPE ids
    restarting at 0) and cut to its own positions."""
    from tests.omni_batches import micro_batch

    s = cfg.data.seq_length
    rows = []
    for r, row in enumerate(PACKED):
        rows.append([])
        for i, (kind, media, length) in enumerate(row):
            one = micro_batch(cfg.model.omni, [kind], length, tokenizer.vocab_size, seed=100 + 10 * r + i,
                              **media, **_ids(tokenizer))
            rows[-1].append((one, int((one.sample_index >= 0).sum())))
        if sum(n for _, n in rows[-1]) > s:
            raise ValueError(f"packed row {r} holds {sum(n for _, n in rows[-1])} tokens > seq_length {s}")
    packed = stack_rows([one for row in rows for one, _ in row], [[n for _, n in row] for row in rows],
                        packed=True, seq_length=s)
    apart = [stack_rows([one for one, _ in row], [[n] for _, n in row], packed=False, seq_length=s)
             for row in rows]
    return {"packed": [packed], "apart": apart}


def stack_rows(samples: list, lengths: list[list[int]], packed: bool, seq_length: int | None = None):
    """An OmniBatch of rows; row r holds the next len(lengths[r]) single-sample batches of
    `samples`, each cut to its first lengths[r][i] positions (unpacked: one whole row each), then
    padding (each row's padding its own cu_seqlens segment when packed)."""
    import torch

    from megatron_omni.contract.batch import OmniBatch
    from tests.omni_batches import PAD_ID

    width = seq_length or samples[0].tokens.shape[1]
    rows = {k: [] for k in ("tokens", "labels", "loss_mask", "position_ids", "sample_index")}
    bounds, it, n = [0], iter(samples), 0
    for r, row in enumerate(lengths):
        pieces = {k: [] for k in rows}
        for length in row:
            one = next(it)
            for k in ("tokens", "labels", "loss_mask"):
                pieces[k].append(getattr(one, k)[0, :length])
            pieces["position_ids"].append(one.position_ids[0, :, :length])
            index = one.sample_index[0, :length]
            pieces["sample_index"].append(torch.where(index >= 0, index + n, index))
            n += 1
            bounds.append(bounds[-1] + length)
        used = sum(row)
        pad = width - used
        if pad:
            bounds.append(r * width + width)
        last = pieces["position_ids"][-1][:, -1:].max() + 1
        fill = {"tokens": torch.full((pad,), PAD_ID), "labels": torch.full((pad,), PAD_ID),
                "loss_mask": torch.zeros(pad), "sample_index": torch.full((pad,), -1),
                "position_ids": (last + torch.arange(pad))[None].expand(3, -1)}
        for k in rows:
            rows[k].append(torch.cat(pieces[k] + [fill[k].to(pieces[k][0].dtype)], dim=-1))
    stacked = {k: torch.stack(v) for k, v in rows.items()}
    mels = [m[:, :f] for s in samples for m, f in zip(s.audio_mel, s.mel_frames())]
    width_mel = max((m.shape[1] for m in mels), default=samples[0].audio_mel.shape[2])
    n_mels = samples[0].audio_mel.shape[1]
    return OmniBatch(
        **stacked,
        sample_ids=[i for s in samples for i in s.sample_ids],
        sample_modality=[m for s in samples for m in s.sample_modality],
        sample_kinds=[k for s in samples for k in s.sample_kinds],
        images=torch.cat([s.images for s in samples]),
        videos=[v for s in samples for v in s.videos],
        video_timestamps=[t for s in samples for t in s.video_timestamps],
        audio_mel=(torch.stack([torch.nn.functional.pad(m, (0, width_mel - m.shape[1])) for m in mels])
                   if mels else torch.zeros(0, n_mels, width_mel)),
        audio_frames=torch.cat([s.audio_frames for s in samples]),
        cu_seqlens=torch.tensor(bounds, dtype=torch.int32) if packed else None,
    )


def run_layout(name: str, pattern: str, overrides: list[str], out: Path) -> dict:
    import torch
    from megatron.core import parallel_state as ps

    from megatron_omni.config import load_config
    from megatron_omni.training.step import run_schedule
    from megatron_omni.training.trainer import Trainer
    from tests.parallel.grads import save_main_grads

    cfg = load_config(None, overrides + PATTERNS[pattern] + [
        f"checkpoint.dir={out / name}", f"checkpoint.load={out / f'init_{pattern}' / 'iter_0000000'}"])
    trainer = Trainer(cfg)
    model, t = trainer.model, cfg.training
    packed = packed_steps(cfg, trainer.tokenizer)
    steps = {"rows": rows_batches(cfg, trainer.tokenizer), "packed": packed["packed"]}
    if torch.distributed.get_world_size() == 1:  # the reference also runs the packed samples apart
        steps["apart"] = packed["apart"]
    reports = {}
    for kind, batches in steps.items():
        for chunk in model:
            chunk.zero_grad_buffer()
        report = run_schedule(model, batches, cfg.data.seq_length, t.micro_batch_size, forward_only=False)
        if report is not None:
            reports[kind] = {k: v.tolist() for k, v in report.items()}
        save_main_grads(model, cfg, trainer.vocab_size, out / name / f"grads_{kind}")
    writer = (ps.is_pipeline_last_stage(ignore_virtual=True) and ps.get_tensor_model_parallel_rank() == 0
              and ps.get_data_parallel_rank() == 0 and ps.get_context_parallel_rank() == 0)
    ps.destroy_model_parallel()
    return reports if writer else {}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--layout", action="append", default=[], help="NAME=PATTERN,override,...")
    parser.add_argument("--save-init", action="store_true", help="first save each pattern's step-0 weights")
    args = parser.parse_args()
    platform.prepare_process()
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import torch
    from megatron.core import parallel_state as ps

    from megatron_omni.config import load_config
    from megatron_omni.training.trainer import Trainer

    out = Path(args.out).parent
    if args.save_init:
        for pattern, extra in PATTERNS.items():
            cfg = load_config(None, args.overrides + extra + [f"checkpoint.dir={out / f'init_{pattern}'}"])
            Trainer(cfg).save(weights_only=True)
            ps.destroy_model_parallel()
    results = {}
    for spec in args.layout:
        name, _, rest = spec.partition("=")
        pattern, *overrides = rest.split(",")
        mine = run_layout(name, pattern, args.overrides + [o for o in overrides if o], out)
        if mine:
            results[name] = mine
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, results)
    if torch.distributed.get_rank() == 0:
        Path(args.out).write_text(json.dumps({k: v for r in gathered for k, v in r.items()}))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
