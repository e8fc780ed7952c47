"""Every conversion command on a bad input: one ``error:`` line, exit status 1, and nothing left on
disk (launch/convert_checkpoint.py, launch/convert_dense_to_hybrid.py; outputs are published by
conversion/common.py staged_folder only when complete and verified). Two subprocess runs check the
real exit status and stderr; the other paths call ``main(argv)`` in this process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .test_qwen3_mapping import tiny_hf

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "launch"))
import convert_checkpoint  # noqa: E402
import convert_dense_to_hybrid  # noqa: E402

pytestmark = pytest.mark.usefixtures("megatron_single_rank")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """An HF Qwen3 folder (vocab 331), its megatron import and a tokenizer with too many ids."""
    from omni_data_prep.make_demo_corpus import make_demo_corpus
    from omni_data_prep.train_tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("conv")
    tiny_hf(331, tied=True).save_pretrained(root / "hf")
    assert convert_checkpoint.main(["from-hf", "--hf", str(root / "hf"), "--out", str(root / "run")]) == 0
    corpus = make_demo_corpus(root / "corpus.jsonl", num_docs=200, seed=0)
    big = train_tokenizer([str(corpus)], str(root / "tok400"), vocab_size=400, seed=0)
    return {"root": root, "hf": root / "hf", "run": root / "run", "tok400": str(big)}


def fails(main, argv: list[str], message: str, out: Path) -> None:
    """main(argv) ends with SystemExit('error: <message>...') and ``out`` (and no temporary
    sibling of it) exists afterwards."""
    existed = out.exists()
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert str(exit_.value.code).startswith(f"error: {message}"), exit_.value.code
    assert out.exists() == existed
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_cli_prints_one_error_line_and_exits_1(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / '.pyshim'}", "OMP_NUM_THREADS": "1"}
    for script, argv, line in (
            ("convert_checkpoint.py", ["to-hf", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
             f"error: --checkpoint {tmp_path / 'nope'}: no such folder"),
            ("convert_dense_to_hybrid.py", ["--dense", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                                            "--pattern", "SLLS"],
             f"error: --dense {tmp_path / 'nope'}: no such folder")):
        proc = subprocess.run([sys.executable, str(ROOT / "launch" / script), *argv], capture_output=True,
                              text=True, env=env, timeout=300)
        assert proc.returncode == 1 and proc.stdout == "", proc
        assert [ln for ln in proc.stderr.splitlines() if not ln.lstrip().startswith(("warnings.warn", "/"))
                ] == [line], proc.stderr
        assert not (tmp_path / "o").exists()


def test_to_hf_errors(folders, tmp_path):
    main, out = convert_checkpoint.main, tmp_path / "out"
    run, hf = str(folders["run"]), str(folders["hf"])
    (tmp_path / "empty").mkdir()
    fails(main, ["to-hf", "--checkpoint", hf, "--out", str(out)],
          f"--checkpoint {hf}: a Hugging Face folder, not a megatron run or checkpoint folder", out)
    fails(main, ["to-hf", "--checkpoint", str(tmp_path / "empty"), "--out", str(out)],
          f"--checkpoint {tmp_path / 'empty'}: {tmp_path / 'empty'} is neither a run folder", out)
    fails(main, ["to-hf", "--checkpoint", run, "--out", str(out), "--tokenizer", str(tmp_path / "t.model")],
          f"--tokenizer {tmp_path / 't.model'}: tokenizer file {tmp_path / 't.model'} does not exist", out)
    fails(main, ["to-hf", "--checkpoint", run, "--out", str(out), "--tokenizer", folders["tok400"]],
          f"--tokenizer {folders['tok400']} has 400 ids but the model's vocabulary is 331", out)
    # a failed verification publishes nothing (before, the tokenizer files stayed behind)
    fails(main, ["to-hf", "--checkpoint", run, "--out", str(out), "--tolerance", "-1"],
          "verify failed: max |logit diff|", out)
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    fails(main, ["to-hf", "--checkpoint", run, "--out", str(out), "--no-verify"],
          f"{out}: already exists; give a new output folder or remove it", out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_to_hf_damaged_checkpoint(folders, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(folders["run"], run)
    shard = next(p for p in sorted((run / "iter_0000000").iterdir()) if p.suffix == ".distcp")
    shard.write_bytes(shard.read_bytes()[:-8])
    out = tmp_path / "out"
    fails(convert_checkpoint.main, ["to-hf", "--checkpoint", str(run), "--out", str(out)],
          f"--checkpoint {run}: no checkpoint under {run} verifies", out)


def test_from_hf_errors(folders, tmp_path):
    main, out = convert_checkpoint.main, tmp_path / "run"
    fails(main, ["from-hf", "--hf", str(tmp_path / "nope"), "--out", str(out)],
          f"{tmp_path / 'nope'}: not a folder", out)
    fails(main, ["from-hf", "--hf", str(folders["run"]), "--out", str(out)],
          f"{folders['run']}: no config.json; not a Hugging Face model folder", out)
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    fails(main, ["from-hf", "--hf", str(llama), "--out", str(out)], f"{llama / 'config.json'}: model_type='llama'", out)
    fails(main, ["from-hf", "--hf", str(folders["hf"]), "--out", str(out), "--tokenizer", folders["tok400"]],
          f"--tokenizer {folders['tok400']} has 400 ids but the model's vocabulary is 331", out)
    fails(main, ["from-hf", "--hf", str(folders["hf"]), "--out", str(folders["run"])],
          f"{folders['run']}: already exists", folders["run"])


def test_from_hf_omni_and_dense_to_hybrid_errors(folders, tmp_path):
    out = tmp_path / "out"
    fails(convert_checkpoint.main, ["from-hf-omni", "--llm", str(folders["hf"]), "--vision", str(tmp_path / "v"),
                                    "--audio", str(tmp_path / "a"), "--out", str(out)],
          f"--vision {tmp_path / 'v'}: {tmp_path / 'v'}: not a folder", out)
    fails(convert_dense_to_hybrid.main, ["--dense", str(folders["run"]), "--out", str(out), "--pattern", "SLX"],
          "model.layer_pattern='SLX'", out)
    fails(convert_dense_to_hybrid.main, ["--dense", str(folders["hf"]), "--out", str(out), "--pattern", "SL"],
          f"--dense {folders['hf']}: a Hugging Face folder", out)
