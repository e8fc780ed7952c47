"""`convert_checkpoint.py to-hf` on an omni checkpoint (conversion/hf_omni, docs/hf_export.md):
after a TP=2 phase-3 run of the tiny omni model, the exported folder's logits equal megatron's
(fp32, 1e-4) on micro-batches with image, video, audio and audio+video (TMRoPE) samples; the
folder loads and generates for each modality in a process where this project cannot be
imported; `from-hf-omni --hf` reads it back bit-identically; bad inputs give one `error:` line
and leave nothing on disk."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from omni_data_prep.multimodal.demo import prepare_omni_demo
from tests.omni_batches import micro_batch

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "omni_tiny_cpu.yaml"
CONVERT = ROOT / "launch" / "convert_checkpoint.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _convert(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CONVERT), *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=ENV)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 1-step TP=2 phase-3 run of examples/omni_tiny_cpu.yaml on a small synthetic corpus."""
    root = tmp_path_factory.mktemp("omni_export")
    values = prepare_omni_demo(root / "data", num_images=8, num_audio=4, num_videos=3, num_conversations=2,
                               num_docs=40)
    mm = dict(values["multimodal"], cross_modal=[str(root / "data" / "videos_audio")])
    sets = [f"data.tokenizer={values['tokenizer']}", "training.train_steps=1", "training.warmup_steps=0",
            f"checkpoint.dir={root / 'run'}"] + [f"data.multimodal.{k}=[{','.join(v)}]" for k, v in mm.items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "launch" / "pretrain_omni.py"), "--phase", "3", "--config", str(EXAMPLE)]
    done = subprocess.run(cmd + [x for s in sets for x in ("--set", s)], capture_output=True, text=True,
                          timeout=600, cwd=root, env=ENV)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root / "run"


@pytest.fixture(scope="module")
def exported(run) -> Path:
    out = run.parent / "hf"
    done = _convert("to-hf", "--checkpoint", run, "--out", out, cwd=run.parent)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert '"max_abs_logit_diff": ' in summary, summary   # always verified
    assert sorted(p.name for p in run.parent.iterdir() if p.name.startswith(".")) == []  # no staging left
    return out


def test_folder_is_self_contained(exported):
    names = {p.name for p in exported.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "processor_config.json",
            "chat_template.jinja", "configuration_omni.py", "modeling_omni.py", "processing_omni.py"} <= names
    for name in ("configuration_omni.py", "modeling_omni.py", "processing_omni.py"):
        imports = [line for line in (exported / name).read_text().splitlines()
                   if line.lstrip().startswith(("import ", "from "))]
        assert [line for line in imports if "megatron" in line or "omni_" in line] == [], imports


@pytest.mark.usefixtures("megatron_single_rank")
def test_logits_equal_megatron_per_modality(run, exported):
    from transformers import AutoModelForCausalLM

    from megatron_omni.conversion import hf_omni

    cfg, model, vocab_size, tok, _ = hf_omni.load_omni(run)
    hf = AutoModelForCausalLM.from_pretrained(exported, trust_remote_code=True, dtype=torch.float32).eval()
    ids = hf_omni.placeholder_ids(tok)
    for seed, modalities in enumerate((["image", "video"], ["audio", "cross"], ["cross", "image"])):
        batch = micro_batch(cfg.model.omni, modalities, 160, tok.vocab_size, seed=seed, placeholder_ids=ids,
                            audio_frames=70)
        videos = batch.videos
        inputs = dict(input_ids=batch.tokens, position_ids=batch.position_ids, pixel_values=batch.images,
                      pixel_values_videos=torch.cat(videos) if videos else None,
                      video_frames=torch.tensor([v.shape[0] for v in videos]),
                      input_features=batch.audio_mel, feature_frames=batch.audio_frames)
        with torch.no_grad():
            theirs = hf(**inputs).logits.float()  # the true vocabulary (megatron's padding is masked)
            ours = model(batch.tokens, batch.position_ids, None, batch=batch).float()[..., :theirs.shape[-1]]
        valid = batch.sample_index >= 0
        diff = (ours - theirs)[valid].abs().max().item()
        assert diff <= 1e-4, (modalities, diff)
        assert ours[valid].std() > 0.1  # a trained model's logits, not all zero


GENERATE = textwrap.dedent('''
    import sys
    class Hide:  # the project is pip-installed (editable) here: make it unimportable
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("megatron_omni", "omni_kernels", "omni_launch", "omni_data_prep", "tests"):
                raise ImportError(name + " is hidden")
    sys.meta_path.insert(0, Hide())
    import numpy as np, torch
    from transformers import AutoModelForCausalLM, AutoProcessor
    folder = sys.argv[1]
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    proc = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    g = np.random.default_rng(0)
    img = lambda: g.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    wave = g.standard_normal(8000).astype(np.float32) * 0.1
    video = dict(videos=[[img(), img(), img()]], video_timestamps=[[0.0, 1.0, 2.5]])
    cases = {"image": ("<image>describe", dict(images=[img()])), "video": ("<video>describe", video),
             "audio": ("<audio>transcribe", dict(audio=[wave])),
             "audio+video": ("<video><audio>describe", dict(video, audio=[wave], audio_in_video=True))}
    for name, (prompt, media) in cases.items():
        text = proc.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                        add_generation_prompt=True)
        inputs = proc(text, **media)
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False, min_new_tokens=5)
        new = out[0, inputs["input_ids"].shape[1]:]
        # the same greedy tokens without a cache: the whole sequence each step, text ids after the prompt's
        ids, pos = inputs["input_ids"], inputs["position_ids"]
        for _ in range(5):
            with torch.no_grad():
                logits = model(**{**inputs, "input_ids": ids, "position_ids": pos}, use_cache=False).logits
            logits[0, -1, model.generation_config.eos_token_id] = -1e9  # as min_new_tokens does
            ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
            pos = torch.cat([pos, pos[..., -1:].amax(1, keepdim=True).expand(-1, 3, -1) + 1], dim=2)
        assert ids[0, inputs["input_ids"].shape[1]:].tolist() == new.tolist(), (name, ids, new)
        print(name, inputs["input_ids"].shape[1], new.tolist())
''')


def test_loads_and_generates_without_the_project(exported, tmp_path):
    script = tmp_path / "generate.py"
    script.write_text(GENERATE)
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(script), str(exported)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()[-4:]
    assert [line.split()[0] for line in lines] == ["image", "video", "audio", "audio+video"], done.stdout


@pytest.mark.usefixtures("megatron_single_rank")
def test_round_trip_is_bit_identical(run, exported, tmp_path):
    from megatron_omni.conversion import hf_omni
    from megatron_omni.conversion.checkpoints import plain_state

    done = _convert("from-hf-omni", "--hf", exported, "--out", tmp_path / "back", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    _, model, vocab, _, _ = hf_omni.load_omni(run)
    original, back = plain_state(model), plain_state(hf_omni.load_omni(tmp_path / "back")[1])
    assert sorted(original) == sorted(back)
    rows = ("llm.embedding.word_embeddings.weight", "llm.output_layer.weight")
    for key in rows:  # the true vocabulary's rows; megatron's masked padding rows come back as zeros
        if key in back:
            assert not back[key][vocab:].any(), key
            original[key], back[key] = original[key][:vocab], back[key][:vocab]
    unequal = [k for k in original if not torch.equal(original[k], back[k])]
    assert unequal == []


def test_existing_output_is_refused(run, exported):
    before = sorted(p.name for p in run.parent.iterdir())
    done = _convert("to-hf", "--checkpoint", run, "--out", exported, cwd=run.parent)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (f"error: {exported}: already exists; give a new output "
                                                    "folder or remove it")
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in run.parent.iterdir()) == before


def test_read_back_of_a_text_folder_is_refused(exported, tmp_path):
    text = tmp_path / "text"
    text.mkdir()
    (text / "config.json").write_text('{"model_type": "qwen3"}')
    done = _convert("from-hf-omni", "--hf", text, "--out", tmp_path / "back", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {text}: config.json has model_type='qwen3'; expected a folder that `to-hf` wrote from an omni "
        "checkpoint (model_type 'megatron_omni')")
    assert not (tmp_path / "back").exists() and "Traceback" not in done.stderr


def test_processor_expands_as_the_data_path(run, exported):
    """Placeholder expansion, TMRoPE ids and log-mels of the exported processor equal the data
    path's (contract/media.py counts, contract/tmrope.py ids, data/multimodal/features.py)."""
    import numpy as np
    from transformers import AutoProcessor

    from megatron_omni.config import config_from_dict, encoders
    from megatron_omni.contract import tmrope
    from megatron_omni.data.multimodal import features
    from megatron_omni.training import checkpoint

    cfg = config_from_dict(checkpoint.read_common(checkpoint.resolve(run))["config"])
    mt, pad = encoders.media_tokens(cfg.model.omni), cfg.data.multimodal.pad_audio_to_30s
    processor = AutoProcessor.from_pretrained(exported, trust_remote_code=True)
    g = np.random.default_rng(1)
    frame = lambda: g.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # noqa: E731
    waves = [g.standard_normal(n).astype(np.float32) * 0.1 for n in (7000, 41000)]
    stamps = [[0.0, 0.7, 1.4, 2.1], [0.0, 1.16, 2.32, 3.48]]
    out = processor("a b<image>c<video>d<audio>e<video><audio>f", images=[frame()],
                    videos=[[frame() for _ in s] for s in stamps], video_timestamps=stamps, audio=waves,
                    audio_in_video=True)
    ids = processor.media["placeholder_ids"]
    frames = [features.num_mel_frames(len(w), pad) for w in waves]
    assert out["feature_frames"].tolist() == frames
    for i, w in enumerate(waves):
        torch.testing.assert_close(out["input_features"][i, :, :frames[i]],
                                   features.log_mel(w, encoders.audio_config(cfg.model.omni).num_mel_bins, pad)[:, :frames[i]],
                                   atol=1e-4, rtol=0)
    tokens = out["input_ids"][0].tolist()
    kind_of = {v: k for k, v in ids.items()}
    video = [tmrope.VideoSpan(*mt.video_grid, tuple(s[::mt.video_frames_per_group])) for s in stamps]
    audio = [tmrope.AudioSpan(mt.audio_tokens(f), mt.audio_seconds_per_token) for f in frames]
    media = iter([tmrope.ImageSpan(*mt.image_grid), video[0], audio[0], tmrope.AudioVideoSpan(video[1], audio[1])])
    spans, expected, i = [], [], 0
    while i < len(tokens):
        if tokens[i] not in kind_of:
            j = i
            while j < len(tokens) and tokens[j] not in kind_of:
                j += 1
            spans.append(tmrope.TextSpan(j - i))
            expected += tokens[i:j]
            i = j
            continue
        span = next(media)
        spans.append(span)
        if isinstance(span, tmrope.AudioVideoSpan):
            expected += [ids[track] for track, b, e in tmrope.interleave_layout(span) for _ in range(e - b)]
        else:
            expected += [ids[kind_of[tokens[i]]]] * span.num_tokens
        i += span.num_tokens
    assert tokens == expected
    assert torch.equal(out["position_ids"][0], tmrope.tmrope_position_ids(spans))
