"""The omni loader (megatron_omni/data/multimodal/loader.py) from the data.multimodal config to
this rank's micro-batches: the mix per schedule stage and the switch at the configured step
(metadata-level plan, >= 10,000 samples per stage), the micro-batch contract on a corpus made by
the preprocessing tools, equal micro-batches per DP rank, exact resume, DataLoader workers, a
fuzz run of >= 200 malformed samples per reason with exact counts in stats(), strict mode, and
the config checks."""
import collections
import dataclasses
import re

import numpy as np
import pytest
import torch

from megatron_omni.config import ConfigError, load_config, validate
from megatron_omni.contract.media import MediaTokens
from megatron_omni.data.bad_samples import READ_SKIP_REASONS, BadSampleError
from megatron_omni.data.multimodal.dataset import LoaderConfig, MultimodalDataset
from megatron_omni.data.multimodal.loader import build_omni_loader, plan_steps
from megatron_omni.config.mixes import PHASE_MIXES, PROGRESSIVE_SCHEDULE, Schedule
from megatron_omni.data.multimodal.mixture import MixtureStream
from megatron_omni.data.sample_format import sample_id

from ..synthetic_media import special_id
from .fuzz_corpus import fuzz_samples, write_folder

MEDIA_TOKENS = MediaTokens(image_grid=(2, 2), video_grid=(2, 2))
SIZE = 16


# ----------------------------------------------------------------------------- mixes

def test_progressive_mix_per_stage_and_switch_at_the_configured_step():
    """Through the loader's plan (expanded lengths only, packing on): >= 10,000 samples per
    stage within 2 points of the configured mix, and every sample of step k drawn under step
    k's stage."""
    starts = [0, 80, 160, 240]
    schedule = Schedule.from_config({"progressive": starts})
    rng = np.random.default_rng(0)
    lengths = {m: rng.integers(5, 40, size=500 + 97 * i)
               for i, m in enumerate(["text", "image_text", "video", "audio", "cross_modal"])}
    stream = MixtureStream(schedule, {m: len(v) for m, v in lengths.items()}, seed=4)
    plan = plan_steps(stream, lengths, seq_length=64, rows_per_step=64, packing=True)
    per_stage = collections.defaultdict(collections.Counter)
    first_step_modalities = {}
    seen = collections.defaultdict(list)
    for step in range(320):
        rows = next(plan)
        assert len(rows) == 64
        stage = schedule.stage_index(step)
        drawn = collections.Counter(m for row in rows for m, _ in row)
        assert set(drawn) <= set(schedule.stages[stage].weights), (step, drawn)
        per_stage[stage].update(drawn)
        if step in starts:
            first_step_modalities[stage] = set(drawn)
        for row in rows:
            assert sum(min(int(lengths[m][i]), 64) for m, i in row) <= 64
            for m, i in row:
                seen[m].append(i)
    for s, stage in enumerate(PROGRESSIVE_SCHEDULE):
        counts = per_stage[s]
        total = sum(counts.values())
        assert total >= 10_000, (s, total)
        weights = {m: w / sum(stage["mix"].values()) for m, w in stage["mix"].items()}
        for m in set(counts) | set(weights):
            assert abs(counts[m] / total - weights.get(m, 0)) < 0.02, (s, m, counts[m] / total)
        assert first_step_modalities[s] == set(weights), "the new modalities start at once"
    # Each modality walks its items once per epoch, across the stage switches.
    for m, items in seen.items():
        n = len(lengths[m])
        for e in range(len(items) // n):
            assert sorted(items[e * n:(e + 1) * n]) == list(range(n)), m


def test_schedule_configs():
    assert Schedule.from_config({"phase": 3}).stages[0].weights == PHASE_MIXES[3]
    assert [s.start_step for s in Schedule.from_config({"progressive": [0, 5, 9, 20]}).stages] \
        == [0, 5, 9, 20]
    with pytest.raises(ValueError, match="give 4 start steps"):
        Schedule.from_config({"progressive": [0, 5]})


# ----------------------------------------------------------------------------- the loader

def _omni_cfg(corpus, **mm):
    root = corpus["root"]
    sources = {"text": [str(root / "text_document")], "image_text": [str(root / "captions")],
               "video": [str(root / "videos")], "audio": [str(root / "audio")],
               "cross_modal": [str(root / "sft"), str(root / "video")]}
    schedule = {"stages": [{"start_step": 0, "mix": {"text": 0.5, "image_text": 0.5}},
                           {"start_step": 2, "mix": PHASE_MIXES[3]}]}
    cfg = load_config(None, ["data.seq_length=128", "training.micro_batch_size=2",
                             "training.global_batch_size=8", "training.train_steps=4",
                             "training.warmup_steps=1"])
    from megatron_omni.config.schema import MultimodalDataConfig

    cfg.data.multimodal = MultimodalDataConfig(**{**sources, "schedule": schedule,
                                                  "image_size": SIZE, **mm})
    return cfg


def _run(cfg, tokenizer, consumed=0, dp_rank=0, dp=2, steps=None):
    loader = build_omni_loader(cfg, tokenizer, MEDIA_TOKENS, consumed, dp_rank, dp)
    per_step = cfg.training.global_batch_size // dp // cfg.training.micro_batch_size
    batches, stats = [], []
    for i, batch in enumerate(loader):
        batches.append(batch)
        if (i + 1) % per_step == 0:
            stats.append(loader.stats())
    return batches, stats


@pytest.fixture(scope="module")
def runs(corpus, tokenizer):
    cfg = _omni_cfg(corpus)
    validate(cfg, world_size=2)
    return cfg, {r: _run(cfg, tokenizer, dp_rank=r) for r in range(2)}


def _same(a, b):
    assert type(a) is type(b)
    for k in (f.name for f in dataclasses.fields(a)):
        x, y = getattr(a, k), getattr(b, k)
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), k
        elif k in ("videos", "video_timestamps"):
            assert len(x) == len(y) and all(torch.equal(u, v) for u, v in zip(x, y))
        else:
            assert x == y, k


def test_micro_batches_follow_the_contract(runs, tokenizer):
    cfg, results = runs
    ids = {k: special_id(tokenizer, k) for k in ("image", "video", "audio")}
    counts = [len(batches) for batches, _ in results.values()]
    assert counts == [8, 8], "4 steps x 2 micro-batches on every rank"
    for batches, _ in results.values():
        for batch in batches:
            b, s = batch.tokens.shape
            assert (b, s) == (2, 128)
            assert batch.tokens.dtype == batch.labels.dtype == torch.int64
            assert batch.loss_mask.dtype == torch.float32
            assert batch.position_ids.shape == (2, 3, 128)
            assert batch.cu_seqlens.dtype == torch.int32 and batch.cu_seqlens[-1] == 256
            assert batch.images.shape[1:] == (3, SIZE, SIZE)
            # the model's check: positions per kind == items x tokens per item
            assert int((batch.tokens == ids["image"]).sum()) == 4 * batch.images.shape[0]
            assert int((batch.tokens == ids["video"]).sum()) == sum(
                MEDIA_TOKENS.video_tokens(v.shape[0]) for v in batch.videos)
            assert int((batch.tokens == ids["audio"]).sum()) == sum(
                MEDIA_TOKENS.audio_tokens(int(f)) for f in batch.audio_frames)
            assert len(batch.sample_ids) == len(batch.sample_modality) == int(
                batch.sample_index.max()) + 1
            index, tokens, labels = batch.sample_index, batch.tokens, batch.labels
            for r in range(b):
                same = index[r, 1:] == index[r, :-1]
                inside = same & (index[r, :-1] >= 0)
                # every label is its own sample's next token; a sample's last position and
                # the padding are not scored; media positions are not scored
                assert torch.equal(labels[r, :-1][inside], tokens[r, 1:][inside])
                assert (batch.loss_mask[r, :-1][~inside] == 0).all()
                media = torch.isin(tokens[r], torch.tensor(list(ids.values())))
                assert (batch.loss_mask[r][media] == 0).all()
                assert (batch.loss_mask[r][torch.isin(labels[r], torch.tensor(
                    list(ids.values())))] == 0).all()
            assert set(batch.sample_modality) <= {"text", "image", "video", "audio", "cross"}


def test_stage_switch_and_stats(runs):
    cfg, results = runs
    for batches, stats in results.values():
        assert len(stats) == 4
        for step, s in enumerate(stats):
            assert set(s) >= {f"data/mix/{m}" for m in
                              ("text", "image_text", "video", "audio", "cross_modal")}
            assert abs(sum(v for k, v in s.items() if k.startswith("data/mix/")) - 1) < 1e-9
            if step < 2:
                assert s["data/mix/video"] == s["data/mix/audio"] == 0
        modalities = [set(b.sample_modality) for b in batches]
        assert set().union(*modalities[:4]) <= {"text", "image"}
    later = set().union(*(set(b.sample_modality) for _, (bs, _) in results.items()
                          for b in bs[4:]))
    assert later - {"text", "image"}, "video/audio/cross appear from step 2"


def test_ranks_differ_and_resume_equals_uninterrupted(runs, tokenizer):
    cfg, results = runs
    assert results[0][0][0].sample_ids != results[1][0][0].sample_ids
    for rank in range(2):
        resumed, _ = _run(cfg, tokenizer, consumed=3 * cfg.training.global_batch_size,
                          dp_rank=rank)
        full = results[rank][0]
        assert len(resumed) == 2
        for a, b in zip(resumed, full[6:]):
            _same(a, b)
    with pytest.raises(ValueError, match="not a whole number of steps"):
        build_omni_loader(cfg, tokenizer, MEDIA_TOKENS, 5, 0, 2)


def test_workers_and_no_packing(runs, corpus, tokenizer):
    cfg, results = runs
    workers, _ = _run(_omni_cfg(corpus, num_workers=2), tokenizer, dp_rank=1)
    for a, b in zip(workers, results[1][0]):
        _same(a, b)
    cfg = _omni_cfg(corpus, packing=False, tmrope=False)
    batches, _ = _run(cfg, tokenizer, dp_rank=0)
    for batch in batches:
        assert batch.cu_seqlens is None and batch.position_ids.shape == (2, 128)
        assert len(batch.sample_ids) <= 2
        assert batch.position_ids[0, :5].tolist() == [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------- bad samples

@pytest.fixture(scope="module")
def fuzz_folders(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("fuzz")
    good, bad = fuzz_samples(tokenizer)
    mixed = [(s, None) for s in good] + [(s, r) for r, v in bad.items() for s in v]
    order = np.random.default_rng(7).permutation(len(mixed))
    mixed = [mixed[i] for i in order]
    in_order = iter(good)   # the good samples keep their relative order among the bad ones
    mixed = [(next(in_order), None) if r is None else (s, r) for s, r in mixed]
    write_folder(root / "clean", good)
    write_folder(root / "mixed", [s for s, _ in mixed])
    goods = iter(range(len(good)))
    good_of = {i: next(goods) for i, (_, r) in enumerate(mixed) if r is None}
    return root, good, bad, mixed, good_of


def _fuzz_cfg(root, **mm):
    from megatron_omni.config.schema import MultimodalDataConfig

    cfg = load_config(None, ["data.seq_length=64", "training.micro_batch_size=1",
                             "training.global_batch_size=2", "training.warmup_steps=1"])
    cfg.data.multimodal = MultimodalDataConfig(
        image_text=[str(root / "mixed")], schedule={"mix": {"image_text": 1}}, packing=False,
        image_size=8, max_video_frames=4, pad_audio_to_30s=False, **mm)
    return cfg


def test_fuzz_counts_every_reason_and_keeps_good_samples(fuzz_folders, tokenizer):
    root, good, bad, mixed, good_of = fuzz_folders
    assert set(bad) == set(READ_SKIP_REASONS) and all(len(v) >= 200 for v in bad.values())
    cfg = _fuzz_cfg(root, num_workers=2)
    cfg.training.train_steps = len(mixed) // 2       # one epoch: every sample read once
    loader = build_omni_loader(cfg, tokenizer, MEDIA_TOKENS, 0, 0, 1)
    clean = MultimodalDataset(root / "clean", tokenizer, LoaderConfig(
        image_size=8, max_video_frames=4, pad_audio_to_30s=False, media_tokens=MEDIA_TOKENS))
    delivered = []
    for batch in loader:
        for row, sid in enumerate(batch.sample_ids):
            shard, doc = map(int, sid.split("-"))
            g = good_of[shard * 300 + doc]
            item = clean[g]
            n = item["expanded_length"]
            assert batch.tokens[row, :n].tolist() == item["tokens"].tolist()
            assert batch.labels[row, :n].tolist() == item["labels"].tolist()
            assert batch.loss_mask[row, :n].tolist() == item["loss_mask"].tolist()
            assert torch.equal(batch.position_ids[row, :, :n], item["position_ids"])
            delivered.append(g)
        if batch.sample_ids:
            assert torch.equal(batch.images, torch.cat([clean[good_of[
                int(s[:5]) * 300 + int(s[6:])]]["images"] for s in batch.sample_ids]))
        assert (batch.loss_mask[batch.sample_index < 0] == 0).all()
    assert sorted(delivered) == list(range(len(good)))
    stats = loader.stats()
    assert {k: v for k, v in stats.items() if k.startswith("data/skipped/")} == {
        f"data/skipped/{r}": float(len(v)) for r, v in sorted(bad.items())}
    assert stats["data/mix/image_text"] == 1.0


def test_strict_names_shard_and_key(fuzz_folders, tokenizer):
    root, _, _, mixed, _ = fuzz_folders
    cfg = _fuzz_cfg(root, strict=True)
    cfg.training.train_steps = len(mixed) // 2
    with pytest.raises(BadSampleError) as err:
        list(build_omni_loader(cfg, tokenizer, MEDIA_TOKENS, 0, 0, 1))
    match = re.search(r"mixed/(shard-\d{5})\.tar key (\d{5})-(\d{6}): (\w+): ", str(err.value))
    assert match, str(err.value)
    index = int(match.group(2)) * 300 + int(match.group(3))
    assert match.group(1) == f"shard-{match.group(2)}"
    assert mixed[index][1] == match.group(4)
    assert sample_id(index // 300, index % 300) == f"{match.group(2)}-{match.group(3)}"


# ----------------------------------------------------------------------------- config

@pytest.mark.parametrize("overrides, pieces", [
    (["data.multimodal.image_backend=cv2"], ["data.multimodal.image_backend='cv2'", "pil"]),
    (["data.multimodal.n_mels=64"], ["data.multimodal.n_mels=64", "128"]),
    (["data.multimodal.max_video_frames=0"], ["data.multimodal.max_video_frames=0", ">= 1"]),
    (["data.multimodal.num_workers=-1"], ["data.multimodal.num_workers=-1"]),
    (["data.multimodal.schedule={mix: {text: -1}}"], ["data.multimodal.schedule=",
                                                      "non-negative", "{phase: 3}"]),
    (["data.multimodal.schedule={mix: {speech: 1}}"], ["mixes ['speech']", "image_text"]),
    (["data.multimodal.schedule={phase: 3}"], ["data.multimodal.text is empty",
                                               "stage 'phase3'"]),
    (["phase=4"], ["data.multimodal.schedule is null", "phase=4"]),
])
def test_config_errors_name_the_field(overrides, pieces):
    with pytest.raises(ConfigError) as err:  # choice fields fail as they load, the rest in validate
        cfg = load_config(None, ["data.multimodal.text=[a]", "data.multimodal.image_text=[b]"]
                          + overrides)
        if "data.multimodal.text is empty" in pieces:
            cfg.data.multimodal.text = []
        validate(cfg, world_size=1)
    for piece in pieces:
        assert piece in str(err.value), (piece, str(err.value))


def test_config_round_trip_and_bad_source(corpus, tokenizer):
    cfg = load_config(None, ["data.multimodal.schedule={progressive: [0, 1, 2, 3]}",
                             "data.multimodal.text=[t]", "data.multimodal.image_text=[i]",
                             "data.multimodal.video=[v]", "data.multimodal.audio=[a]",
                             "data.multimodal.cross_modal=[c]"])
    validate(cfg, world_size=1)
    assert load_config().data.multimodal is None
    with pytest.raises(ConfigError, match=r"data.multimodal.audio\[0\]='a' is neither a prepared"):
        build_omni_loader(cfg, tokenizer, MEDIA_TOKENS, 0, 0, 1)
