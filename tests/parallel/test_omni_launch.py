"""`launch/pretrain_omni.py --phase 1|2|3` with examples/omni_tiny_cpu.yaml on 2 CPU ranks, on the
synthetic media corpus the data path makes (data_prep/multimodal/demo.py) with a few corrupt
samples planted, read by the omni loader: each phase trains, logging the loss of every modality
in its mix under the mix's names, the realised mix, the skip counts (every reason, 0 included),
progress (elapsed, ETA, samples, non-padding tokens, tokens/s per GPU), peak memory and the
parameter counts (console and TensorBoard). The phases run at
TP=2 (the example; phase 1 also with the contrastive loss), DP=2 and PP=2, so the loader's
counts are summed over data-parallel ranks, once per TP group, and reach a logging rank (last
pipeline stage) that is not the one counting (first stage). The PP=2 run (phase 3) validates at
every step on held-out text, image-text and audio sources (data.multimodal.valid): the losses of
each modality and their token-weighted total, on the console and in TensorBoard, equal a direct
evaluation of the same held-out samples, each run alone through the run's checkpoint at TP=PP=1.
A mistake in the command or the config is reported once, not once per rank."""
import collections
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from megatron_omni.data.bad_samples import LOADER_SKIP_REASONS
from omni_data_prep.multimodal.demo import prepare_omni_demo

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "omni_tiny_cpu.yaml"
MIX = {1: ("image_text", "audio", "cross_modal"), 2: ("image_text", "audio"),
       3: ("text", "image_text", "video")}
"""Modalities each run's mix surely draws in 2 steps of 8 samples (phase 3 samples audio and
cross-modal at 10 % each)."""
LAYOUT = {1: [], 2: ["parallel.tp=1"], 3: ["parallel.tp=1", "parallel.pp=2"]}
VALIDATES = 3
"""The run that validates (every step, one global batch per held-out modality): PP=2, so the
losses come from the last stage, not the one that reads the media."""
RUN = {1: ["model.omni.contrastive_weight=0.2",  # cross_modal: videos with their audio track
           "data.multimodal.schedule={mix: {image_text: 0.5, audio: 0.25, cross_modal: 0.25}}"],
       2: ["training.group_lr={projectors: 5.0e-3}"], 3: []}
CORRUPT = {"images": (0, 3, 6, 9), "audio": (0,)}
"""Samples (of shard 0) whose media bytes the demo fixture breaks: corrupt_image, corrupt_audio."""


def _break_media(folder: Path, indices) -> None:
    """Zero the media members (after 8 bytes: a PNG/FLAC header and nothing decodable) of the
    given samples in the folder's shard 0, rewriting the tar."""
    path = folder / "shard-00000.tar"
    keys = {f"00000-{i:06d}" for i in indices}
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    path.unlink()
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            if member.name.split(".")[0] in keys and not member.name.endswith(".json"):
                data = data[:8] + bytes(len(data) - 8)
            tar.addfile(member, io.BytesIO(data))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("omni_demo")
    values = prepare_omni_demo(out, num_images=12, num_audio=6, num_videos=3, num_conversations=4,
                               num_docs=100)
    for folder, indices in CORRUPT.items():
        _break_media(out / folder, indices)
    return out, values


@pytest.fixture(scope="module")
def demo(corpus):
    out, values = corpus
    mm = dict(values["multimodal"], cross_modal=[str(out / "videos_audio")])
    return [f"data.tokenizer={values['tokenizer']}"] + [
        f"data.multimodal.{name}=[{','.join(paths)}]" for name, paths in mm.items()]


@pytest.fixture(scope="module")
def held_out(corpus) -> str:
    """data.multimodal.valid of held-out text documents, image captions and audio transcripts,
    prepared with the corpus's tokenizer from records of its own media (clean files: only the
    training shards were broken)."""
    from omni_data_prep.multimodal.audio_transcript import AudioTranscriptSource
    from omni_data_prep.multimodal.image_caption import ImageCaptionSource
    from omni_data_prep.multimodal.runner import run
    from omni_data_prep.preprocess_text import preprocess

    out, values = corpus
    root, tokenizer = out / "held_out", values["tokenizer"]
    root.mkdir()
    records = {"text": [{"text": f"held out document {n}: {n} comes before {n + 1}."} for n in range(12)],
               "images": [json.loads(r) for r in (out / "images.jsonl").read_text().splitlines()[8:]],
               "audio": [json.loads(r) for r in (out / "audio.jsonl").read_text().splitlines()[3:]]}
    for name, rows in records.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    preprocess([str(root / "text.jsonl")], tokenizer, root / "text_document", progress=False)
    for source, name in ((ImageCaptionSource(), "images"), (AudioTranscriptSource(), "audio")):
        run(source, [str(root / f"{name}.jsonl")], tokenizer, root / name, progress=False,
            media_root=out / "media")
    return (f"data.multimodal.valid={{text: [{root / 'text_document'}], image_text: [{root / 'images'}], "
            f"audio: [{root / 'audio'}]}}")


def _expected_log(phase: int, sets: list[str], world: int) -> list[dict[str, float]]:
    """Per step, the data stats the log must show, from the loader of every data-parallel rank
    read here: the mix of the step's delivered samples, the skips summed since step 1, the
    non-padding tokens of the step ("tokens")."""
    from megatron_omni.config import load_config, validate
    from megatron_omni.data.multimodal.loader import loader_stats
    from megatron_omni.data.tokenizer import load_tokenizer
    from megatron_omni.training.trainer import omni_micro_batches

    cfg = load_config(str(EXAMPLE), [f"phase={phase}", *sets])
    dp = validate(cfg, world)
    t = cfg.training
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    loaders = [omni_micro_batches(cfg, tokenizer, 0, r, dp) for r in range(dp)]
    skips, expected = collections.Counter(), []
    for _ in range(t.train_steps):
        mix, tokens = collections.Counter(), 0
        for loader in loaders:
            for _ in range(t.global_batch_size // dp // t.micro_batch_size):
                tokens += next(loader).non_padding_tokens()
            m, s = loader.counts()
            mix += m
            skips += s
        expected.append({**loader_stats(loaders[0].modalities, mix, skips), "tokens": tokens})
    return expected


def _tensorboard(run_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


TOTALS: dict[int, float] = {}
"""params/total of each phase run so far: one model, whatever the layout (TP, DP or PP)."""


def _check_parameters(stdout: str, scalars: dict, phase: int) -> None:
    """The start of the log: the model's trainable and total parameters, once."""
    starts = [line for line in stdout.splitlines() if line.startswith("parameters: ")]
    assert len(starts) == 1, stdout[-3000:]
    trainable, total = scalars["params/trainable"][0], scalars["params/total"][0]
    assert starts[0].startswith(f"parameters: {int(trainable):,} trainable of {int(total):,} ")
    assert 0 < trainable < total if phase in (1, 2) else trainable == total > 0
    TOTALS[phase] = total
    assert len(set(TOTALS.values())) == 1, TOTALS


def _check_progress(parts: dict, scalars: dict, step: int, tokens: int, phase: int) -> None:
    """A logged step's progress fields: samples and non-padding tokens so far, times, memory."""
    assert parts["samples"] == [str(8 * step)] and scalars["train/consumed_samples"][step] == 8 * step
    assert parts["tokens"] == [f"{tokens:,}"] and scalars["train/consumed_tokens"][step] == tokens
    assert 0 < tokens < 8 * 256 * step  # padding is not counted
    assert scalars["train/tokens_per_s_per_gpu"][step] > 0 and parts["tok/s/GPU"]
    assert len(parts["elapsed"][0].split(":")) == 3 and len(parts["ETA"][0].split(":")) == 3
    assert scalars["train/eta_s"][step] >= 0 and (step < 2 or scalars["train/eta_s"][step] == 0)
    assert float(parts["peak_mem"][0]) > 0 and parts["peak_mem"][1] == "GiB"
    assert parts["skipped_steps"] == ["0"] and scalars["train/skipped_steps"][step] == 0
    if phase == 2:
        assert parts["lr/projectors"] and scalars["train/lr/projectors"][step] > scalars["train/lr"][step]


def _launch(phase: int, sets: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """pretrain_omni.py on 2 CPU ranks; the run and its console step lines."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "launch" / "pretrain_omni.py"), "--phase", str(phase), "--config", str(EXAMPLE)]
    for s in sets:
        cmd += ["--set", s]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, [line for line in done.stdout.splitlines()
                  if line.startswith("step ") and " | validation " not in line]


@pytest.mark.parametrize("phase", [1, 2, 3])
def test_pretrain_omni_phase_on_two_ranks(demo, held_out, tmp_path, phase, request):
    sets = demo + LAYOUT[phase] + RUN[phase] + [
        "training.train_steps=2", "training.warmup_steps=1", f"checkpoint.dir={tmp_path / 'run'}"]
    if phase == VALIDATES:
        sets += [held_out, "training.eval_interval=1", "training.eval_steps=1"]
    done, lines = _launch(phase, sets, tmp_path)
    assert [line.split("|")[0].split()[1] for line in lines] == ["1/2", "2/2"], done.stdout[-2000:]
    for modality in MIX[phase]:
        assert any(f"loss/{modality} " in line for line in lines), (modality, lines)
    assert (tmp_path / "run" / "iter_0000002").is_dir()

    expected = _expected_log(phase, sets, 2)
    assert expected[-1]["data/skipped/corrupt_image"] > 0, expected  # the planted samples were read
    scalars = _tensorboard(tmp_path / "run")
    _check_parameters(done.stdout, scalars, phase)
    tokens = 0
    for step, (line, want) in enumerate(zip(lines, expected), start=1):
        parts = {p.split()[0]: p.split()[1:] for p in line.split(" | ")}
        shown = dict(zip(parts["mix"][::2], map(float, parts["mix"][1::2])))
        shown_skips = dict(zip(parts["skipped"][::2], map(int, parts["skipped"][1::2])))
        assert shown_skips == {r: int(want.get(f"data/skipped/{r}", 0)) for r in LOADER_SKIP_REASONS}, line
        mix = {k.split("/")[-1]: v for k, v in want.items() if "/mix/" in k}
        assert shown.keys() == mix.keys() and sum(mix.values()) == pytest.approx(1.0), (line, mix)
        assert all(abs(shown[m] - mix[m]) <= 0.005 for m in mix), (line, mix)
        losses = {k.split("/", 1)[1] for k in parts if k.startswith("loss/")} - {"contrastive"}
        assert losses <= shown.keys(), line  # loss/<m> beside mix <m>: one naming
        tokens += want.pop("tokens")
        _check_progress(parts, scalars, step, tokens, phase)
        for tag, value in want.items():
            assert scalars[tag][step] == pytest.approx(value, abs=1e-6), tag
        for reason in LOADER_SKIP_REASONS:
            assert scalars[f"data/skipped/{reason}"][step] == want.get(f"data/skipped/{reason}", 0), reason
    if phase == 1:
        assert all("loss/contrastive " in line for line in lines), lines
        assert set(scalars["train/loss/contrastive"]) == {1, 2}
    if phase == VALIDATES:
        request.getfixturevalue("megatron_single_rank")
        _check_validation(done.stdout, scalars, sets, tmp_path / "run")
    else:
        assert " | validation " not in done.stdout and not any(t.startswith("valid/") for t in scalars)


def _one_sample(batch, k: int, item_samples: dict[str, list[int]]):
    """Sample k of an omni micro-batch as a micro-batch of its own: one unpacked row of its
    positions, with its media items (``item_samples``: the sample of each item, per kind)."""
    import dataclasses

    import torch

    row = int((batch.sample_index == k).any(1).nonzero()[0])
    at = batch.sample_index[row] == k
    mine = {kind: [i for i, s in enumerate(owners) if s == k] for kind, owners in item_samples.items()}
    return dataclasses.replace(
        batch, tokens=batch.tokens[row][at][None], labels=batch.labels[row][at][None],
        loss_mask=batch.loss_mask[row][at][None], position_ids=batch.position_ids[row][..., at][None],
        sample_index=torch.zeros(1, int(at.sum()), dtype=torch.long), sample_ids=[batch.sample_ids[k]],
        sample_modality=[batch.sample_modality[k]], sample_kinds=[batch.sample_kinds[k]],
        images=batch.images[mine["image"]], videos=[batch.videos[i] for i in mine["video"]],
        video_timestamps=[batch.video_timestamps[i] for i in mine["video"]],
        audio_mel=batch.audio_mel[mine["audio"]], audio_frames=batch.audio_frames[mine["audio"]],
        cu_seqlens=None)


def _direct_validation(cfg, run_dir: Path) -> dict[str, tuple[float, int]]:
    """{modality: (summed NLL of the loss-masked labels, their count)} over the held-out batches
    of each modality of data.multimodal.valid (the loader of held_out_config from step 0, all
    rows: dp 1), every sample run alone through the run's checkpoint at TP=PP=1."""
    import torch

    from megatron_omni.config import encoders
    from megatron_omni.contract.batch import SAMPLE_MODALITY
    from megatron_omni.contract.media import KINDS
    from megatron_omni.conversion import hf_omni
    from megatron_omni.data.multimodal.loader import build_omni_loader, held_out_config
    from megatron_omni.data.tokenizer import load_tokenizer
    from megatron_omni.models.omni.media import assign_items, item_token_counts

    _, model, _, _, _ = hf_omni.load_omni(run_dir)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    media_tokens = encoders.media_tokens(cfg.model.omni)
    out = {}
    for modality in cfg.data.multimodal.valid:
        total, count = 0.0, 0
        batches = list(build_omni_loader(held_out_config(cfg, modality), tokenizer, media_tokens, 0, 0, 1))
        assert len(batches) == cfg.training.global_batch_size // cfg.training.micro_batch_size  # eval_steps=1
        for batch in batches:
            assert {SAMPLE_MODALITY[m] for m in batch.sample_modality} == {modality}, batch.sample_ids
            counts = item_token_counts(media_tokens, batch)
            index = batch.sample_index.reshape(-1)
            owners = {kind: assign_items(kind, (batch.tokens.reshape(-1) == model.placeholder_ids[kind])
                                         .nonzero().squeeze(1), index, counts[kind], batch.sample_ids)
                      for kind in KINDS}
            for k in range(len(batch.sample_ids)):
                one = _one_sample(batch, k, owners)
                with torch.no_grad():
                    losses = model(one.tokens, one.position_ids, None, labels=one.labels, batch=one)
                total += (losses.double() * one.loss_mask.double()).sum().item()
                count += int(one.loss_mask.sum())
        out[modality] = (total, count)
    return out


def _check_validation(stdout: str, scalars: dict, sets: list[str], run_dir: Path) -> None:
    """A validation line per step (total first, then each held-out modality), the same values in
    TensorBoard, and at the last step (the checkpoint's weights) the direct evaluation's of the
    plan's first rows: the second validation reads the same held-out rows as the first."""
    from megatron_omni.config import load_config

    cfg = load_config(str(EXAMPLE), [f"phase={VALIDATES}", *sets])
    names = ["loss", "loss/text", "loss/image_text", "loss/audio"]
    lines = [line for line in stdout.splitlines() if line.startswith("step ") and " | validation " in line]
    assert [line.split(" | ")[0].split()[1] for line in lines] == ["1/2", "2/2"], lines
    for step, line in enumerate(lines, start=1):
        shown = {p.split()[1]: float(p.split()[2]) for p in line.split(" | ")[1:]}
        assert list(shown) == names, line
        for name in names:
            assert shown[name] == pytest.approx(scalars[f"valid/{name}"][step], abs=6e-5), (name, line)
    direct = _direct_validation(cfg, run_dir)
    want = {f"loss/{m}": nll / n for m, (nll, n) in direct.items()}
    want["loss"] = sum(nll for nll, _ in direct.values()) / sum(n for _, n in direct.values())
    got = {name: scalars[f"valid/{name}"][2] for name in names}
    print(f"validation at step 2: {got}; direct: {want}")
    assert got == pytest.approx(want, abs=1e-4)
    assert len({round(v, 3) for v in want.values()}) == len(want)  # the modalities differ


def test_frozen_stage_saves_and_group_lr_resumes_exactly(demo, tmp_path):
    """Phase 2 at PP=2: the last stage holds only the frozen LLM, so its optimizer has no
    parameter (megatron's save asserted on it), and training.group_lr gives groups that differ
    in their learning rate alone (megatron's load swapped their rates). Resumed from step 2, steps
    3 and 4 log the same loss, learning rates and grad norm as the run that went straight on."""
    sets = demo + ["parallel.tp=1", "parallel.pp=2", "training.train_steps=4",
                   "training.warmup_steps=0", "training.group_lr={projectors: 5.0e-3}",
                   "checkpoint.save_interval=1", "checkpoint.keep_last=0"]
    _, straight = _launch(2, sets + [f"checkpoint.dir={tmp_path / 'a'}"], tmp_path)
    resumed_dir = tmp_path / "b"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "a" / "iter_0000002", resumed_dir / "iter_0000002")
    (resumed_dir / "latest_checkpointed_iteration.txt").write_text("2")
    _, resumed = _launch(2, sets + [f"checkpoint.dir={resumed_dir}"], tmp_path)

    def fields(line: str) -> dict:
        parts = {p.split()[0]: p.split()[1] for p in line.split(" | ")}
        return {k: parts[k] for k in ("step", "loss", "lr", "lr/projectors", "grad_norm")}

    assert [fields(line) for line in resumed] == [fields(line) for line in straight[2:]], resumed
    assert float(fields(resumed[0])["lr/projectors"]) > 4 * float(fields(resumed[0])["lr"])


@pytest.mark.parametrize("args, error", [
    (["--phase", "9"], "error: argument --phase: invalid choice: 9"),
    (["--phase", "1", "--set", "training.lr=-1"], "config error: "),
], ids=["bad_phase", "config_error"])
def test_a_mistake_is_reported_once_on_two_ranks(tmp_path, args, error):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "launch" / "pretrain_omni.py"), *args, "--config", str(EXAMPLE)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert output.count(error) == 1, output[-3000:]
    assert 'pretrain_omni.py", line' not in output, output[-3000:]  # no traceback of ours
