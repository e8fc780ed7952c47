"""Step time of one data-parallel replica under 1F1B, encoders coupled (on stage 0, inside the
schedule) or decoupled (parallel.modality_decoupled: spread over the stages, before and after
the schedule). The model and its inputs are in docs/modality_decoupled.md.

    python -m megatron_omni.plan.schedule_sim     # the 8B / 32 GPU and 32B / 64 GPU phase-3 rows
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from megatron_omni.config.encoders import audio_config, media_tokens, vision_config
from megatron_omni.config.schema import OmniConfig
from megatron_omni.contract.balance import balance
from megatron_omni.plan.memory import dtype_bytes, micro_batches
from megatron_omni.plan.step_time import Hardware, link_bandwidth, micro_batch_seconds, tower_forward_flops


def stage_order(pp: int, stage: int, micro: int) -> list[tuple[str, int]]:
    """megatron's non-interleaved 1F1B order of a stage: min(pp - stage - 1, micro) warm-up
    forwards, then one forward and one backward in turn, then the remaining backwards."""
    warmup = min(pp - stage - 1, micro)
    order = [("F", m) for m in range(warmup)]
    for i in range(micro - warmup):
        order += [("F", warmup + i), ("B", i)]
    return order + [("B", m) for m in range(micro - warmup, micro)]


def one_f_one_b(forward: list[list[float]], backward: list[list[float]], hop: float = 0.0) -> float:
    """Seconds from the first forward to the last backward: ``forward[s][m]`` and
    ``backward[s][m]`` the time of micro-batch m on stage s; ``hop`` the time of one
    activation (or gradient) send between neighbouring stages. Each stage runs stage_order;
    F(s, m) waits for F(s-1, m), B(s, m) for B(s+1, m)."""
    pp, micro = len(forward), len(forward[0])
    orders = [stage_order(pp, s, micro) for s in range(pp)]
    done: dict[tuple[str, int, int], float] = {}
    clock, position = [0.0] * pp, [0] * pp
    while any(position[s] < len(orders[s]) for s in range(pp)):
        progressed = False
        for s in range(pp):
            if position[s] == len(orders[s]):
                continue
            kind, m = orders[s][position[s]]
            dep = ("F", s - 1, m) if kind == "F" else ("B", s + 1, m)
            first = s == 0 if kind == "F" else s == pp - 1
            if not first and dep not in done:
                continue
            ready = 0.0 if first else done[dep] + hop
            start = max(clock[s], ready)
            clock[s] = start + (forward if kind == "F" else backward)[s][m]
            done[(kind, s, m)] = clock[s]
            position[s] += 1
            progressed = True
        if not progressed:
            raise RuntimeError("1F1B simulation deadlocked")
    return max(clock)


ROW_MEDIA = {
    "text": (),
    "image_text": (("image", 1),) * 4,
    "video": (("video", 64),),
    "audio": (("audio", 3000),) * 2,
    "cross_modal": (("video", 64), ("audio", 3000)),
}
"""Media of one packed row of each mix modality: (kind, frames) per item — 4 images of an
interleaved document, one 64-frame video (1 fps, data.multimodal.max_video_frames), two 30 s
clips (mel frames), a video with its audio track. An assumption of the simulation (the data
fixes it in a run), named in docs/modality_decoupled.md."""


@dataclass(frozen=True)
class Item:
    """A media item: its encoder forward seconds and its LLM-token payload in bytes."""

    forward: float
    payload: float


def item_forward_seconds(cfg: OmniConfig, kind: str, frames: int, hw: Hardware) -> float:
    """Forward seconds of one item through its TP-split tower (tower_forward_flops: a vision
    frame is one sequence of num_patches, an audio clip one of ceil(frames / 2) positions)."""
    omni, tp = cfg.model.omni, cfg.parallel.tp
    rate = hw.peak_tflops * 1e12 * hw.efficiency * tp
    if kind == "audio":
        a = audio_config(omni)
        positions = min((frames - 1) // 2 + 1, a.max_source_positions)
        return tower_forward_flops(positions, a.num_layers, a.hidden_size, a.ffn_hidden_size) / rate
    v = vision_config(omni)
    return frames * tower_forward_flops(v.num_patches, v.num_layers, v.hidden_size, v.ffn_hidden_size) / rate


def draw_micro_batches(cfg: OmniConfig, mix: dict[str, float], micro: int, seed: int) -> list[list[str]]:
    """The mix modality of each row of each micro-batch, drawn from ``mix`` (seeded)."""
    rng = random.Random(seed)
    names, weights = list(mix), list(mix.values())
    return [rng.choices(names, weights, k=cfg.training.micro_batch_size) for _ in range(micro)]


@dataclass(frozen=True)
class StepTimes:
    """Seconds of one step's pipeline (no data-parallel reduction or optimizer step, the same in
    every mode) for text-only, coupled and decoupled micro-batches."""

    text_only: float
    coupled: float
    decoupled: float

    @property
    def coupled_ratio(self) -> float:
        """Text-only over coupled step time: the share of text-only throughput kept."""
        return self.text_only / self.coupled

    @property
    def decoupled_ratio(self) -> float:
        return self.text_only / self.decoupled


def simulate(cfg: OmniConfig, dp: int, mix: dict[str, float], hw: Hardware = Hardware(),
             encoders_train: bool = True, seed: int = 0, recompute: bool = True) -> StepTimes:
    """Step times of one replica of cfg's layout on micro-batches drawn from ``mix``. LLM
    stages: step_time.micro_batch_seconds without the encoders, one third forward, two thirds
    backward. Encoders: forward once; trained, backward twice the forward, and decoupled one more
    forward (each owner recomputes its items in the backward; ``recompute=False``: the variant
    that keeps the encoder graph instead, not built). Decoupled adds the largest
    stage share before and after the schedule and the payload's gather and scatter over the
    pipeline group."""
    p = cfg.parallel
    micro = micro_batches(cfg, dp)
    text_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, omni=None))
    llm = [micro_batch_seconds(text_cfg, s, hw) for s in range(p.pp)]
    forward = [[t / 3] * micro for t in llm]
    backward = [[2 * t / 3] * micro for t in llm]
    hop = dtype_bytes(cfg) * cfg.training.micro_batch_size * cfg.data.seq_length * cfg.model.hidden_size \
        / (p.tp if p.sequence_parallel else 1) / link_bandwidth(p.tp * 2, hw)
    text_only = one_f_one_b(forward, backward, hop)

    tokens = media_tokens(cfg.model.omni)
    per_token = dtype_bytes(cfg) * cfg.model.hidden_size
    rows = draw_micro_batches(cfg, mix, micro, seed)
    items: list[list[Item]] = []
    for row_kinds in rows:
        mb = []
        for name in row_kinds:
            for kind, frames in ROW_MEDIA[name]:
                llm_tokens = {"image": tokens.image_tokens, "video": tokens.video_tokens(frames),
                              "audio": tokens.audio_tokens(frames)}[kind]
                mb.append(Item(item_forward_seconds(cfg, kind, frames, hw), llm_tokens * per_token))
        items.append(mb)
    back = 2.0 if encoders_train else 0.0

    coupled_f = [row[:] for row in forward]
    coupled_b = [row[:] for row in backward]
    for m, mb in enumerate(items):
        coupled_f[0][m] += sum(i.forward for i in mb)
        coupled_b[0][m] += back * sum(i.forward for i in mb)
    coupled = one_f_one_b(coupled_f, coupled_b, hop)

    flat = [i for mb in items for i in mb]
    owner = balance([i.forward for i in flat], p.pp)
    pre = max(sum(i.forward for i, o in zip(flat, owner) if o == s) for s in range(p.pp)) if flat else 0.0
    post = ((1.0 if recompute else 0.0) + back) * pre if encoders_train else 0.0
    payload = sum(i.payload for i in flat) / link_bandwidth(p.tp * p.pp, hw)
    decoupled = pre + payload + text_only + (post + payload if encoders_train else 0.0)
    return StepTimes(text_only, coupled, decoupled)


PLAN_LAYOUTS = {"8B, 32 GPUs (tp4 pp2)": ("examples/omni_8b_phase3_32gpu.yaml", 32),
                "32B, 64 GPUs (tp8 pp2)": ("examples/omni_32b_phase3_64gpu.yaml", 64)}
"""The plan's phase-3 layouts (their example configs and world sizes)."""


def plan_layout(name: str) -> tuple[OmniConfig, int]:
    """(config, data-parallel size) of a PLAN_LAYOUTS entry."""
    from pathlib import Path

    from megatron_omni.config.load import load_config

    path, world = PLAN_LAYOUTS[name]
    cfg = load_config(Path(__file__).resolve().parents[2] / path)
    p = cfg.parallel
    return cfg, world // (p.tp * p.pp * p.cp)


def main() -> None:
    import json

    from megatron_omni.config.mixes import PHASE_MIXES

    out = {}
    for name in PLAN_LAYOUTS:
        cfg, dp = plan_layout(name)
        runs = [simulate(cfg, dp, PHASE_MIXES[3], seed=seed) for seed in range(8)]
        kept = [simulate(cfg, dp, PHASE_MIXES[3], seed=seed, recompute=False) for seed in range(8)]
        mean = {k: sum(getattr(r, k) for r in runs) / len(runs) for k in ("text_only", "coupled", "decoupled")}
        mean["decoupled_no_recompute"] = sum(r.decoupled for r in kept) / len(kept)
        out[name] = {**{f"{k}_s": round(v, 3) for k, v in mean.items()},
                     **{f"{k}_ratio": round(mean["text_only"] / v, 3) for k, v in mean.items() if k != "text_only"}}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
