"""The README's first command: the embedded default end to end on this machine.

corpus → sentencepiece tokenizer → indexed binaries → tiny Qwen3-style model trained on 2 ranks
(TP=2, examples/tiny_cpu.yaml) → checkpoint → Hugging Face folder (logits verified against
megatron) → greedy generation with transformers. Each stage prints its wall time.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _stage(name: str, start: float) -> float:
    now = time.perf_counter()
    print(f"[demo] {name}: {now - start:.1f} s", flush=True)
    return now


def _run(cmd: list[str]) -> None:
    print("[demo] $ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def generate(hf_dir: Path, prompts: list[str], new_tokens: int = 16) -> list[str]:
    """Greedy continuation of each prompt by the converted model under transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    outputs = []
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        outputs.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return outputs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--nproc", type=int, default=2, help="training ranks (default 2)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=C",
                        help="extra config overrides for the training run")
    args = parser.parse_args(argv)
    out = (ROOT / args.out).resolve()
    t0 = start = time.perf_counter()
    from megatron_omni import platform

    platform.prepare_process()
    from omni_data_prep.demo_data import prepare_demo_data

    tokenizer, prefix = prepare_demo_data(out / "data", num_docs=3000)
    start = _stage("corpus + tokenizer + indexed binaries", start)

    run_dir = out / "run"
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
          "launch/pretrain_omni.py", "--phase", "3", "--config", "examples/tiny_cpu.yaml",
          "--set", f"data.tokenizer={tokenizer}", "--set", f"data.train_blend=[{prefix}]",
          "--set", f"checkpoint.dir={run_dir}", "--set", "checkpoint.resume=false",
          *[x for o in args.overrides for x in ("--set", o)]])
    start = _stage(f"training on {args.nproc} ranks", start)

    hf_dir = out / "hf"
    _run([sys.executable, "launch/convert_checkpoint.py", "to-hf", "--checkpoint", str(run_dir),
          "--out", str(hf_dir), "--verify"])
    start = _stage("conversion to Hugging Face (+ logit check)", start)

    prompts = ["count: 31 32 33 34", "letters: c d e", "the sky is"]
    for prompt, text in zip(prompts, generate(hf_dir, prompts)):
        print(f"[demo] {prompt!r} -> {text!r}")
    _stage("generation with transformers", start)
    _stage("total", t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
