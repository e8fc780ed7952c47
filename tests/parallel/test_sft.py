"""Phase 5 (SFT) end to end on 2 CPU ranks: a one-step phase-3 run (TP=2) of the tiny omni model,
then `launch/phase5.sh` with examples/omni_tiny_sft_cpu.yaml at PP=2 starting from it
(checkpoint.load, resharded), on the demo corpus's SFT conversations (data_prep/multimodal/
demo.py). The run takes the steps of its num_epochs (loader.epoch_steps) and the warmup of its
warmup_ratio, and lowers the loss, which is the assistant-token loss; its checkpoint exports
with `launch/convert_checkpoint.py to-hf` (the omni folder, remote code), which transformers loads, scores (the
assistant tokens of a text-only conversation, below the run's first loss) and generates from.
The run validates every step on held-out text conversations (data.multimodal.valid.text); the last
validation loss equals a direct evaluation of the same samples, one at a time, by the export."""
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_omni.config import encoders, load_config
from megatron_omni.data.multimodal.loader import build_omni_loader, epoch_steps
from megatron_omni.data.sample_reader import iter_samples
from megatron_omni.data.tokenizer import load_tokenizer
from omni_data_prep.multimodal import conversations
from omni_data_prep.multimodal.demo import prepare_omni_demo

from ..synthetic_media import write_jsonl

ROOT = Path(__file__).resolve().parents[2]
SFT = ROOT / "examples" / "omni_tiny_sft_cpu.yaml"


def _port() -> str:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return str(s.getsockname()[1])


def _launch(script: str, config: Path, sets: list[str], log_dir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(CONFIG=str(config), GPUS_PER_NODE="2", CUDA_VISIBLE_DEVICES="", MASTER_PORT=_port(),
               LOG_DIR=str(log_dir), OMP_NUM_THREADS="1", DRY_RUN="0")
    done = subprocess.run(["bash", str(ROOT / "launch" / script), *[a for s in sets for a in ("--set", s)]],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _steps(stdout: str) -> list[dict]:
    """Per console step line (torchrun prefixes the rank): {"step": "k/N", "loss", "lr"}."""
    return [{"step": m.group(1), "loss": float(m.group(2)), "lr": float(m.group(3))}
            for m in re.finditer(r"step +(\d+/\d+) \| loss ([\d.]+) \| lr ([\d.e+-]+) \|", stdout)]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft")
    demo = prepare_omni_demo(tmp / "demo", num_images=12, num_audio=6, num_videos=3, num_conversations=8,
                             num_docs=100)
    data = [f"data.tokenizer={demo['tokenizer']}"]
    pretrain = data + [f"data.multimodal.{m}=[{','.join(p)}]" for m, p in demo["multimodal"].items()]
    _launch("phase3.sh", ROOT / "examples" / "omni_tiny_cpu.yaml",
            pretrain + ["training.train_steps=1", "training.warmup_steps=0", "training.global_batch_size=4",
                        f"checkpoint.dir={tmp / 'run3'}"], tmp / "logs3")
    held_out = tmp / "held_out"   # text-only conversations the run never trains on
    conversations.main(["--input", write_jsonl(tmp / "held_out.jsonl", [
        {"conversations": [{"from": "human", "value": f"What comes after {n}?"},
                           {"from": "gpt", "value": f"{n + 1} comes after {n}."}]} for n in range(20, 26)]),
        "--tokenizer", demo["tokenizer"], "--output-dir", str(held_out)])
    sets = data + [f"data.multimodal.{m}=[{','.join(p)}]" for m, p in demo["sft"].items()]
    sets += ["training.num_epochs=3", "training.warmup_ratio=0.2", "parallel.tp=1", "parallel.pp=2",
             f"data.multimodal.valid={{text: [{held_out}]}}", "training.eval_interval=1", "training.eval_steps=1",
             f"checkpoint.dir={tmp / 'run5'}", f"checkpoint.load={tmp / 'run3'}"]
    done = _launch("phase5.sh", SFT, sets, tmp / "logs5")
    return {"tmp": tmp, "demo": demo, "sets": sets, "stdout": done.stdout}


@pytest.fixture(scope="module")
def hf_model(sft_run):
    """The run's checkpoint through `to-hf --verify` (its logits against megatron's), loaded by
    transformers."""
    from transformers import AutoModelForCausalLM

    hf = sft_run["tmp"] / "hf"
    done = subprocess.run([sys.executable, str(ROOT / "launch" / "convert_checkpoint.py"), "to-hf", "--checkpoint",
                           str(sft_run["tmp"] / "run5"), "--out", str(hf), "--verify"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["max_abs_logit_diff"] < 1e-4
    return hf, AutoModelForCausalLM.from_pretrained(hf, trust_remote_code=True).eval()


def _nll_sum(model, tokens, loss_mask) -> tuple[float, int]:
    """Summed NLL of the labels (next tokens) at the positions of loss_mask, and their count,
    of one sample's tokens run alone."""
    import torch

    with torch.no_grad():
        logp = torch.log_softmax(model(tokens[None]).logits[0, :-1].double(), dim=-1)
    picked = logp[torch.arange(len(tokens) - 1), tokens[1:]]
    mask = loss_mask[:-1].bool()
    return -picked[mask].sum().item(), int(mask.sum())


def test_sft_runs_its_epochs_and_lowers_the_assistant_loss(sft_run):
    cfg = load_config(SFT, ["phase=5", *sft_run["sets"]])
    tokenizer = load_tokenizer(sft_run["demo"]["tokenizer"])
    total = epoch_steps(cfg, tokenizer, encoders.media_tokens(cfg.model.omni), 3)
    steps = _steps(sft_run["stdout"])
    assert [s["step"] for s in steps] == [f"{k}/{total}" for k in range(1, total + 1)]
    assert f"initialised weights from {sft_run['tmp'] / 'run3' / 'iter_0000001'}" in sft_run["stdout"]
    warmup = round(0.2 * total)
    assert steps[0]["lr"] == pytest.approx(1e-3 / warmup, rel=1e-3)
    assert max(s["lr"] for s in steps) == pytest.approx(1e-3, rel=1e-3)
    losses = [s["loss"] for s in steps]
    print("SFT losses:", " ".join(f"{x:.3f}" for x in losses))
    assert sum(losses[-3:]) / 3 < losses[0] - 0.6, losses   # measured: 6.24 -> 5.33


def test_sft_checkpoint_exports_to_hf_and_generates(sft_run, hf_model):
    import torch
    from transformers import AutoTokenizer

    hf, model = hf_model
    sample = next(iter_samples(sft_run["demo"]["sft"]["text"][0], decode=False))   # "What comes after 0?"
    ids, mask = torch.tensor(sample.tokens), torch.tensor(sample.loss_mask)
    total, count = _nll_sum(model, ids, torch.cat([mask[1:], mask[:1]]))
    first_loss = _steps(sft_run["stdout"])[0]["loss"]
    print(f"HF assistant-token NLL {total / count:.3f} (the run's first step: {first_loss:.3f})")
    assert total / count < first_loss - 0.5
    prompt = ids[None, :int(mask.nonzero()[0])]   # up to the assistant's first target
    out = model.generate(prompt, max_new_tokens=6, do_sample=False, eos_token_id=None)
    assert out.shape == (1, prompt.shape[1] + 6) and torch.equal(out[:, :prompt.shape[1]], prompt)
    print("generated:", repr(AutoTokenizer.from_pretrained(hf).decode(out[0, prompt.shape[1]:])))


def test_validation_loss_is_the_held_out_assistant_loss_sample_by_sample(sft_run, hf_model):
    """The last step's validation loss (data.multimodal.valid.text, packed rows) equals the per-token
    mean over the same held-out batch with each sample run alone through the exported model:
    the held-out samples are scored on their assistant tokens and no packed sample sees another."""
    from megatron_omni.data.multimodal.loader import held_out_config

    _, model = hf_model
    valid = [float(v) for v in re.findall(r"\| validation loss ([\d.]+)", sft_run["stdout"])]
    assert len(valid) == len(_steps(sft_run["stdout"])) and valid[-1] < valid[0], valid
    cfg = held_out_config(load_config(SFT, ["phase=5", *sft_run["sets"]]), "text")
    tokenizer = load_tokenizer(sft_run["demo"]["tokenizer"])
    batches = list(build_omni_loader(cfg, tokenizer, encoders.media_tokens(cfg.model.omni), 0, 0, 1))
    assert len(batches) == cfg.training.global_batch_size // cfg.training.micro_batch_size and batches[0].packed
    total, count, samples = 0.0, 0, 0
    for batch in batches:
        for row in range(batch.tokens.shape[0]):
            for k in batch.sample_index[row].unique().tolist():
                if k >= 0:
                    at = batch.sample_index[row] == k
                    nll, n = _nll_sum(model, batch.tokens[row][at], batch.loss_mask[row][at])
                    total, count, samples = total + nll, count + n, samples + 1
    print(f"validation losses {valid}; direct {total / count:.4f} over {samples} samples in "
          f"{len(batches)} packed micro-batches")
    assert samples > len(batches) * cfg.training.micro_batch_size   # rows hold several samples
    assert valid[-1] == pytest.approx(total / count, abs=2e-4)
