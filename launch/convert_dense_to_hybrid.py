"""Turn a dense checkpoint into a hybrid one (one CPU or GPU process).

    python launch/convert_dense_to_hybrid.py --dense runs/dense --out runs/hybrid-init --pattern SLLS \
        [--set model.linear.num_query_groups=32 ...]

``--dense`` is a run folder (newest checkpoint) or one checkpoint folder saved at any TP/PP, of
the text LLM or of the omni model. The hybrid model is the dense run's config with
``model.layer_pattern=--pattern`` (letters D, S, L per layer, or ``hybrid``) and the ``--set``
overrides. Dense-typed weights (and an omni model's encoders and projectors) are copied
bit-identically, linear layers take the dense W_q/W_k/W_v/W_o (K/V heads replicated when
model.linear.num_query_groups is larger), new gates and norms keep their fresh initialisation
(megatron_omni/conversion/hybrid.py, docs/hybrid_conversion.md). Writes a weights-only
checkpoint (iteration 0) under ``--out``; train from it with ``--set checkpoint.load=OUT --set
model.layer_pattern=PATTERN`` (and the same overrides). Prints a JSON summary of what was copied, replicated and fresh. A bad
input ends with one ``error:`` line, exit status 1 and no ``--out`` folder.
"""
from __future__ import annotations

import argparse
import json
import sys


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dense", required=True, help="dense run folder or checkpoint folder")
    parser.add_argument("--out", required=True, help="run folder to write iter_0000000 into")
    parser.add_argument("--pattern", required=True, help="model.layer_pattern of the hybrid model")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=C",
                        help="config override for the hybrid model (repeatable)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from megatron_omni import platform

    platform.prepare_process()
    from megatron_omni.conversion.checkpoints import USER_ERRORS
    from megatron_omni.conversion.hybrid import convert_dense_checkpoint

    platform.init_distributed()
    try:
        out, report = convert_dense_checkpoint(args.dense, args.out, args.pattern, args.overrides)
    except USER_ERRORS as e:
        raise SystemExit(f"error: {e}") from None
    summary = {"checkpoint": str(out), "pattern": args.pattern,
               **{f"num_{kind}": len(keys) for kind, keys in report.items()},
               "replicated": report["replicated"], "fresh": report["fresh"]}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
