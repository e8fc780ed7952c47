"""Phase-4 distillation of the omni model (training/distill.py): a tiny dense omni checkpoint (the
teacher, encoders and projectors included) is converted to the hybrid "SL" omni model
(conversion/hybrid.py), and launch/pretrain_omni.py --phase 4 on 2 CPU ranks (TP=2, sequence
parallel) distils it on the synthetic media corpus with the encoders and projectors frozen:

- the logged KL falls over 4 steps, and the optimised loss is the KL (kl_weight 1, T = 1),
  also split by mix modality (loss/<m>);
- step 1's logged KL equals the KL computed here, on one rank, from the same micro-batches (the
  loader's first global batch) through the dense teacher and the converted student: per token of
  the merged sequence (text and media positions, samples kept apart by cu_seqlens), masked by
  the loss mask;
- after distillation the encoders and projectors are still bit-identical to the conversion's.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from megatron_omni.config import ConfigError, config_to_dict, load_config
from megatron_omni.contract.media import PLACEHOLDERS
from megatron_omni.conversion.checkpoints import single_rank_config, single_rank_model
from megatron_omni.conversion.hybrid import convert_dense_checkpoint
from megatron_omni.data.tokenizer import load_tokenizer
from megatron_omni.models.omni.model import MEDIA_MODULES, OmniModel
from megatron_omni.training import checkpoint
from megatron_omni.training.distill import teacher_config
from megatron_omni.training.step import packed_seq_params
from megatron_omni.training.trainer import omni_micro_batches
from omni_data_prep.multimodal.demo import prepare_omni_demo
from tests.parallel.conftest import checkpoint_tensors

pytestmark = pytest.mark.usefixtures("megatron_single_rank")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "omni_tiny_cpu.yaml"
PATTERN, STEPS = "SL", 4
MODEL = ["model.num_layers=2", "data.seq_length=128", "training.micro_batch_size=1",
         "training.global_batch_size=2", "model.linear.chunk_size=64",
         "data.multimodal.schedule={mix: {text: 0.2, image_text: 0.3, audio: 0.2, cross_modal: 0.3}}"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("omni_demo")
    values = prepare_omni_demo(out, num_images=8, num_audio=4, num_videos=2, num_conversations=2, num_docs=60)
    mm = dict(values["multimodal"], cross_modal=[str(out / "videos_audio")])
    return [f"data.tokenizer={values['tokenizer']}"] + [
        f"data.multimodal.{name}=[{','.join(paths)}]" for name, paths in mm.items()]


def _tensorboard(run_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def _model(cfg, vocab_size: int, placeholder_ids: dict, source: Path) -> OmniModel:
    model = OmniModel(cfg, vocab_size, placeholder_ids)
    checkpoint.load_checkpoint(source, [model])
    return model.eval()


@torch.no_grad()
def _first_step_kl(cfg, dense_cfg, tokenizer, teacher: Path, student: Path) -> float:
    """Per-token KL(teacher ‖ student) of the run's (``cfg``) first global batch, with both
    models at TP=1 on this one rank."""
    ids = {kind: tokenizer.special_ids[text] for kind, text in PLACEHOLDERS.items()}
    models = (_model(single_rank_config(dense_cfg, "float32"), tokenizer.vocab_size, ids, teacher),
              _model(single_rank_config(cfg, "float32"), tokenizer.vocab_size, ids, student))
    loader = omni_micro_batches(cfg, tokenizer, 0, 0, 1)
    total, tokens, media = 0.0, 0.0, 0
    for _ in range(cfg.training.global_batch_size // cfg.training.micro_batch_size):
        batch = next(loader)  # rows of several samples: cu_seqlens keeps them apart
        packed = packed_seq_params(batch.cu_seqlens, batch.tokens.device)
        log_p, log_q = (F.log_softmax(m(batch.tokens, batch.position_ids, None, batch=batch,
                                        packed_seq_params=packed).float(), -1) for m in models)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        total += float((kl * batch.loss_mask).sum())
        tokens += float(batch.loss_mask.sum())
        media += len(batch.images) + len(batch.videos) + len(batch.audio_mel)
    assert media > 0, "the first global batch holds no media"
    return total / tokens


def test_omni_distillation_lowers_the_kl_of_the_merged_sequence(demo, tmp_path):
    tokenizer = load_tokenizer(demo[0].split("=", 1)[1])
    vocab = tokenizer.vocab_size
    dense_cfg = load_config(str(EXAMPLE), demo + MODEL + ["phase=3", "parallel.tp=1"])
    dense = single_rank_model(dense_cfg, vocab, omni=True)
    teacher = checkpoint.save_checkpoint(tmp_path / "dense", 0, [dense], 0, config_to_dict(dense_cfg), vocab)
    init, _ = convert_dense_checkpoint(tmp_path / "dense", tmp_path / "hybrid", PATTERN)

    run = tmp_path / "distill"
    sets = demo + MODEL + [
        f"model.layer_pattern={PATTERN}", "parallel.sequence_parallel=true",
        "training.trainable=[llm, linear_attention]", f"training.train_steps={STEPS}",
        "training.lr=1e-3", "training.warmup_steps=0", "training.lr_decay_style=constant",
        f"distill.teacher={tmp_path / 'dense'}", f"checkpoint.load={tmp_path / 'hybrid'}",
        f"checkpoint.dir={run}", f"checkpoint.save_interval={STEPS}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "launch" / "pretrain_omni.py"), "--phase", "4", "--config", str(EXAMPLE)]
    done = subprocess.run(cmd + [a for s in sets for a in ("--set", s)], capture_output=True, text=True,
                          timeout=900, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "tp=2 pp=1 vpp=None cp=1 dp=1" in done.stdout + done.stderr

    scalars = _tensorboard(run)
    kl, loss = scalars["train/kl"], scalars["train/loss"]
    assert sorted(kl) == list(range(1, STEPS + 1)) and kl[1] > 0
    assert kl[STEPS] < 0.6 * kl[1], kl
    assert all(loss[s] == pytest.approx(kl[s], rel=1e-6) for s in kl)
    assert any(tag.startswith("train/loss/") and tag != "train/loss/text" for tag in scalars), sorted(scalars)

    cfg = load_config(str(EXAMPLE), ["phase=4", *sets])
    assert kl[1] == pytest.approx(_first_step_kl(cfg, dense_cfg, tokenizer, teacher, init), rel=1e-4)

    before, after = checkpoint_tensors(init), checkpoint_tensors(run / f"iter_{STEPS:07d}")
    media = [k for k in before if k.startswith(tuple(f"{m}." for m in MEDIA_MODULES))]
    assert media and all(torch.equal(before[k], after[k]) for k in media)
    assert not torch.equal(before["decoder.layers.1.self_attention.linear_qkv.weight"],
                           after["decoder.layers.1.self_attention.linear_qkv.weight"])


OMNI = ["phase=4", "model.omni.preset=tiny", "distill.teacher=runs/dense"]


@pytest.mark.parametrize("student, saved, message", [
    ([], ["model.omni=null"], "distill.teacher=runs/dense is the text-only LLM but model.omni is set"),
    ([], ["model.omni.image_tokens=9"], "distill.teacher=runs/dense cannot read this run's omni batches "
                                        "(placeholders expanded and media sized for model.omni): media "
                                        "token counts: teacher MediaTokens(image_grid=(3, 3)"),
    ([], ["model.omni.vision_overrides={image_size: 32}"], "image size: teacher 32 vs this run 16"),
    (["model.omni.tmrope=false"], [], "model.omni.tmrope: teacher True vs this run False"),
    ([], ["model.layer_pattern=DSDD"], "is a hybrid model (layer_pattern='DSDD')"),
])
def test_teachers_that_cannot_read_the_students_batches_are_refused(student, saved, message):
    cfg = load_config(None, OMNI + student)
    with pytest.raises(ConfigError) as err:
        teacher_config(cfg, config_to_dict(load_config(None, ["phase=3", "model.omni.preset=tiny", *saved])))
    assert message in str(err.value)


def test_the_omni_teacher_is_dense_frozen_in_layout_and_a_text_student_takes_its_llm():
    saved = config_to_dict(load_config(None, ["phase=3", "model.omni.preset=tiny", "model.omni.contrastive_weight=0.5"]))
    cfg = load_config(None, OMNI + ["parallel.tp=2", "parallel.modality_decoupled=true",
                                    "model.layer_pattern=SLSL"])
    teacher = teacher_config(cfg, saved)
    assert teacher.model.omni.contrastive_weight == 0.0 and teacher.model.layer_pattern is None
    assert teacher.parallel.tp == 2 and not teacher.parallel.modality_decoupled
    assert teacher_config(load_config(None, ["phase=4", "distill.teacher=runs/dense"]), saved).model.omni is None
