"""The README's first command: the omni job end to end on this machine.

synthetic omni corpus (images, audio, video, video+audio, conversations, text; a sentencepiece
tokenizer) → the tiny omni model (examples/omni_tiny_cpu.yaml) trained on 2 ranks at TP=2, phase 1
(projectors) then phase 3 (everything, starting from phase 1's weights) → ``to-hf`` (one folder
with remote code; logits verified against megatron) → greedy generation with transformers from an
image prompt, an audio prompt and text prompts. Each stage prints what it produced and its wall time.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = "examples/omni_tiny_cpu.yaml"


def _stage(name: str, start: float) -> float:
    now = time.perf_counter()
    print(f"[demo] {name}: {now - start:.1f} s", flush=True)
    return now


def _run(cmd: list[str]) -> str:
    print("[demo] $ " + " ".join(cmd), flush=True)
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    print(done.stdout, end="", flush=True)
    if done.returncode:
        raise SystemExit(f"error: the command above exited with {done.returncode}")
    return done.stdout


def _train(phase: int, run_dir: Path, sets: list[str], nproc: int) -> str:
    out = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "launch/pretrain_omni.py", "--phase", str(phase), "--config", EXAMPLE,
                *[x for s in sets + [f"checkpoint.dir={run_dir}", "checkpoint.resume=false"] for x in ("--set", s)]])
    losses = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("step ")]
    return f"{len(losses)} steps, first {losses[0]}, last {losses[-1]}" if losses else "no step lines"


def generate(hf_dir: Path, image_size: int) -> list[tuple[str, str]]:
    """Greedy answers of the exported model under transformers to an image prompt, an audio
    prompt and text prompts."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoProcessor

    model = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(hf_dir, trust_remote_code=True)
    g = np.random.default_rng(0)
    image = g.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    chat = lambda text: processor.apply_chat_template(  # noqa: E731
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    cases = [("image: <image>describe", chat("<image>Describe the image."), {"images": [image]}),
             ("audio: <audio>transcribe", chat("<audio>Transcribe the audio."), {"audio": [tone]}),
             ("text: the", "the", {}), ("text: a", "a", {})]
    answers = []
    for name, text, media in cases:
        inputs = processor(text, **media)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1]:]
        if len(new) == 0:
            raise SystemExit(f"error: no tokens generated for the {name} prompt")
        answers.append((f"{name} ({inputs['input_ids'].shape[1]} prompt tokens)",
                        processor.tokenizer.decode(new, skip_special_tokens=True)))
    return answers


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--nproc", type=int, default=2, help="training ranks (default 2)")
    parser.add_argument("--steps", type=int, default=6, help="training steps per phase (default 6)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=C",
                        help="extra config overrides for both training runs")
    args = parser.parse_args(argv)
    out = (ROOT / args.out).resolve()
    t0 = start = time.perf_counter()
    from megatron_omni import platform

    platform.prepare_process()
    from omni_data_prep.multimodal.demo import prepare_omni_demo

    values = prepare_omni_demo(out / "data", num_images=24, num_audio=8, num_videos=4, num_conversations=8,
                               num_docs=200)
    sources = {name: [str(p) for p in paths] for name, paths in values["multimodal"].items()}
    counts = ", ".join(f"{name}: {len(paths)} source(s)" for name, paths in sources.items())
    start = _stage(f"omni corpus + tokenizer under {out / 'data'} ({counts})", start)

    sets = [f"data.tokenizer={values['tokenizer']}", f"training.train_steps={args.steps}",
            "training.warmup_steps=1"] + [f"data.multimodal.{n}=[{','.join(p)}]" for n, p in sources.items()]
    sets += args.overrides
    phase1, phase3 = out / "phase1", out / "phase3"
    summary = _train(1, phase1, sets, args.nproc)
    start = _stage(f"phase 1 (projectors) on {args.nproc} ranks, TP=2 -> {phase1}: {summary}", start)
    summary = _train(3, phase3, sets + [f"checkpoint.load={phase1}"], args.nproc)
    start = _stage(f"phase 3 (all parameters, from phase 1) on {args.nproc} ranks, TP=2 -> {phase3}: {summary}",
                   start)

    hf_dir = out / "hf"
    if hf_dir.exists():
        import shutil

        shutil.rmtree(hf_dir)
    result = json.loads(_run([sys.executable, "launch/convert_checkpoint.py", "to-hf", "--checkpoint", str(phase3),
                              "--out", str(hf_dir)]).strip().splitlines()[-1])
    start = _stage(f"Hugging Face folder {hf_dir} ({result['tensors']} tensors, max |logit diff| vs megatron "
                   f"{result['max_abs_logit_diff']:.1e})", start)

    from megatron_omni.config import load_config
    from megatron_omni.config import encoders

    size = encoders.vision_config(load_config(str(ROOT / EXAMPLE)).model.omni).image_size
    for prompt, text in generate(hf_dir, size):
        print(f"[demo] {prompt} -> {text!r}")
    _stage("generation with transformers (image, audio and text prompts)", start)
    _stage("total", t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
