"""Convert between megatron checkpoints and Hugging Face Qwen3 folders (one CPU or GPU process).

    python launch/convert_checkpoint.py to-hf --checkpoint runs/tiny --out hf/tiny [--verify]
    python launch/convert_checkpoint.py from-hf --hf Qwen3-0.6B --out runs/qwen3-init
    python launch/convert_checkpoint.py from-hf-omni --llm Qwen3-0.6B --vision siglip-so400m-patch14-384
        --audio whisper-medium --out runs/omni-init [--config RUN.yaml] [--set model.omni.preset=plan]

``to-hf`` takes a run folder (newest checkpoint) or one checkpoint folder saved at any TP/PP;
``--verify`` loads the written folder with transformers and compares logits on random tokens.
On an omni checkpoint it writes the whole omni model as one folder with remote code
(conversion/hf_omni; docs/hf_export.md), always verified; ``from-hf-omni --hf FOLDER`` reads such
a folder back.
``from-hf`` writes a weights-only checkpoint; start a run from it with ``--set checkpoint.load=DIR``.
``from-hf-omni`` does the same for the omni model from HF Qwen3, SigLIP and Whisper folders
(projectors freshly initialised); its model section comes from the HF configs and must match
``--config`` (the run's YAML) where one is given. It prints the tensors imported per part, the
fresh keys and the ``--set`` strings of the derived model.
"""
from __future__ import annotations

import argparse
import json
import sys


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    to_hf = sub.add_parser("to-hf", help="megatron checkpoint -> HF Qwen3ForCausalLM folder")
    to_hf.add_argument("--checkpoint", required=True, help="run folder or checkpoint folder")
    to_hf.add_argument("--out", required=True, help="output HF folder")
    to_hf.add_argument("--tokenizer", help="tokenizer to export (default: the run's data.tokenizer)")
    to_hf.add_argument("--verify", action="store_true", help="compare logits with transformers")
    to_hf.add_argument("--tolerance", type=float, default=1e-5, help="--verify max abs logit difference")
    from_hf = sub.add_parser("from-hf", help="HF Qwen3 folder -> weights-only megatron checkpoint")
    from_hf.add_argument("--hf", required=True, help="HF folder (config.json + safetensors)")
    from_hf.add_argument("--out", required=True, help="run folder to write iter_0000000 into")
    from_hf.add_argument("--tokenizer", help="tokenizer path to record in the checkpoint's config")
    omni = sub.add_parser("from-hf-omni", help="HF Qwen3 + SigLIP + Whisper folders -> weights-only omni checkpoint")
    omni.add_argument("--hf", help="a folder `to-hf` wrote from an omni checkpoint (instead of the three below)")
    omni.add_argument("--llm", help="HF Qwen3 folder (the LLM)")
    omni.add_argument("--vision", help="HF SiglipVisionModel / SiglipModel folder")
    omni.add_argument("--audio", help="HF WhisperEncoder / WhisperModel folder")
    omni.add_argument("--out", required=True, help="run folder to write iter_0000000 into")
    omni.add_argument("--config", help="the run's YAML: the folders must match its model section")
    omni.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                      help="config override (projectors, training.seed for their init, ...)")
    return parser.parse_args(argv)


def verify_logits(model, hf_dir, tolerance: float) -> float:
    """Max |logit difference| between our model and transformers' on random tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=next(model.parameters()).dtype).eval()
    tokens = torch.randint(0, hf.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    model.eval()
    with torch.no_grad():
        ours = model(tokens, positions, None).float()
        theirs = hf(tokens).logits.float()
    diff = (ours - theirs).abs().max().item()
    if diff > tolerance:
        raise SystemExit(f"verify failed: max |logit diff| {diff:.3e} > {tolerance:.1e}")
    return diff


def main(argv=None) -> int:
    args = parse_args(argv)
    from megatron_omni import platform

    platform.prepare_process()
    from megatron_omni.conversion.checkpoints import hf_folder_to_megatron, megatron_to_hf_folder
    from megatron_omni.conversion.omni import hf_folders_to_omni

    platform.init_distributed()
    from megatron_omni.config import ConfigError
    from megatron_omni.conversion import hf_omni
    from megatron_omni.conversion.common import ConversionError

    if args.command == "to-hf" and hf_omni.is_omni_source(args.checkpoint):
        try:
            summary = hf_omni.export_omni(args.checkpoint, args.out, args.tokenizer, tolerance=max(args.tolerance, 1e-4))
        except ConversionError as e:
            raise SystemExit(f"error: {e}") from e
    elif args.command == "from-hf-omni" and args.hf:
        try:
            summary = hf_omni.omni_folder_to_megatron(args.hf, args.out)
        except ConversionError as e:
            raise SystemExit(f"error: {e}") from e
    elif args.command == "to-hf":
        model, out = megatron_to_hf_folder(args.checkpoint, args.out, args.tokenizer)
        summary = {"hf_folder": str(out)}
        if args.verify:
            summary["max_abs_logit_diff"] = verify_logits(model, out, args.tolerance)
    elif args.command == "from-hf-omni":
        try:
            if not (args.llm and args.vision and args.audio):
                raise ConversionError("from-hf-omni needs --hf FOLDER or all of --llm, --vision and --audio")
            summary = hf_folders_to_omni(args.llm, args.vision, args.audio, args.out, args.config, args.set)
        except (ConversionError, ConfigError) as e:
            raise SystemExit(f"error: {e}") from e
    else:
        summary = {"checkpoint": str(hf_folder_to_megatron(args.hf, args.out, args.tokenizer))}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
