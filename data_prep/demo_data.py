"""The embedded default data: a learnable synthetic corpus, a tokenizer trained on it and its
indexed binaries, made in one call (used by the README demo and the tests)."""
from __future__ import annotations

from pathlib import Path

from omni_data_prep.make_demo_corpus import make_demo_corpus
from omni_data_prep.preprocess_text import preprocess
from omni_data_prep.train_tokenizer import train_tokenizer


def prepare_demo_data(out_dir: str | Path, num_docs: int = 2000, vocab_size: int = 400,
                      seed: int = 0, workers: int = 1) -> tuple[Path, Path]:
    """Write corpus.jsonl, tok.model and text_document.{bin,idx} under out_dir.
    Returns (tokenizer path, data prefix)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = make_demo_corpus(out / "corpus.jsonl", num_docs=num_docs, seed=seed)
    tokenizer = train_tokenizer([str(corpus)], str(out / "tok"), vocab_size=vocab_size, seed=seed)
    prefix = out / "text_document"
    preprocess([str(corpus)], tokenizer, prefix, workers=workers, progress=False)
    return tokenizer, prefix
