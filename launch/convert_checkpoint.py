"""Convert between megatron checkpoints and Hugging Face Qwen3 folders (one CPU or GPU process).

    python launch/convert_checkpoint.py to-hf --checkpoint runs/tiny --out hf/tiny [--no-verify]
    python launch/convert_checkpoint.py from-hf --hf Qwen3-0.6B --out runs/qwen3-init
    python launch/convert_checkpoint.py from-hf-omni --llm Qwen3-0.6B --vision siglip-so400m-patch14-384
        --audio whisper-medium --out runs/omni-init [--config RUN.yaml] [--set model.omni.preset=plan]

``to-hf`` takes a run folder (newest checkpoint) or one checkpoint folder saved at any TP/PP; it
loads the written folder with transformers and compares logits on random tokens before
publishing it (``--no-verify`` skips that); a hybrid checkpoint (S/L layers in model.layer_pattern)
becomes a self-contained ``omni_hybrid`` folder (trust_remote_code; docs/hf_export.md), which
``from-hf`` reads back; an omni checkpoint becomes one folder with remote code for the whole omni
model (conversion/hf_omni), which ``from-hf-omni --hf FOLDER`` reads back. ``from-hf`` writes a weights-only checkpoint and prints
the ``--set`` strings (``model_sets``) of the imported model; start a run from it with
``--set checkpoint.load=DIR`` plus those strings. ``from-hf-omni`` does the same for the omni model
from HF Qwen3, SigLIP and Whisper folders (projectors freshly initialised); its model section comes
from the HF configs and must match ``--config`` (the run's YAML) where one is given. It prints the
tensors imported per part, the fresh keys and the ``--set`` strings of the derived model.

Every output folder is written under a temporary name and published only when complete; a bad
input ends with one ``error:`` line, exit status 1 and nothing written.
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
    to_hf.add_argument("--out", required=True, help="output HF folder (must not exist)")
    to_hf.add_argument("--tokenizer", help="tokenizer to export (default: the run's data.tokenizer)")
    to_hf.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                       help="compare logits with transformers before publishing (default: on)")
    to_hf.add_argument("--tolerance", type=float, default=1e-5, help="--verify max abs logit difference")
    from_hf = sub.add_parser("from-hf", help="HF Qwen3 folder -> weights-only megatron checkpoint")
    from_hf.add_argument("--hf", required=True, help="HF folder (config.json + safetensors)")
    from_hf.add_argument("--out", required=True, help="run folder to write iter_0000000 into (must not exist)")
    from_hf.add_argument("--tokenizer", help="tokenizer path to record in the checkpoint's config")
    omni = sub.add_parser("from-hf-omni", help="HF Qwen3 + SigLIP + Whisper folders -> weights-only omni checkpoint")
    omni.add_argument("--hf", help="a folder `to-hf` wrote from an omni checkpoint (instead of the three below)")
    omni.add_argument("--llm", help="HF Qwen3 folder (the LLM)")
    omni.add_argument("--vision", help="HF SiglipVisionModel / SiglipModel folder")
    omni.add_argument("--audio", help="HF WhisperEncoder / WhisperModel folder")
    omni.add_argument("--out", required=True, help="run folder to write iter_0000000 into (must not exist)")
    omni.add_argument("--config", help="the run's YAML: the folders must match its model section")
    omni.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                      help="config override (projectors, training.seed for their init, ...)")
    return parser.parse_args(argv)


def convert(args: argparse.Namespace) -> dict:
    """Run one command; returns its JSON summary. A user mistake raises one of
    conversion/checkpoints.py's USER_ERRORS (main prints it as one ``error:`` line)."""
    from megatron_omni.conversion import hf_omni, hybrid_export
    from megatron_omni.conversion.checkpoints import hf_folder_to_megatron, megatron_to_hf_folder
    from megatron_omni.conversion.common import ConversionError
    from megatron_omni.conversion.omni import hf_folders_to_omni

    if args.command == "to-hf" and hf_omni.is_omni_source(args.checkpoint):
        return hf_omni.export_omni(args.checkpoint, args.out, args.tokenizer, args.verify,
                                   max(args.tolerance, 1e-4))
    if args.command == "from-hf-omni":
        if args.hf:
            return hf_omni.omni_folder_to_megatron(args.hf, args.out)
        if not (args.llm and args.vision and args.audio):
            raise ConversionError("from-hf-omni needs --hf FOLDER or all of --llm, --vision and --audio")
    if args.command in ("to-hf", "from-hf"):
        summary = hybrid_export.convert_if_hybrid(args)
        if summary is not None:
            return summary
    if args.command == "to-hf":
        return megatron_to_hf_folder(args.checkpoint, args.out, args.tokenizer,
                                     args.tolerance if args.verify else None)
    if args.command == "from-hf-omni":
        return hf_folders_to_omni(args.llm, args.vision, args.audio, args.out, args.config, args.set)
    return hf_folder_to_megatron(args.hf, args.out, args.tokenizer)


def main(argv=None) -> int:
    args = parse_args(argv)
    from megatron_omni import platform

    platform.prepare_process()
    from megatron_omni.conversion.checkpoints import USER_ERRORS

    platform.init_distributed()
    try:
        summary = convert(args)
    except USER_ERRORS as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
