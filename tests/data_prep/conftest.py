"""Fixtures for the data_prep tests: a demo corpus and tiny tokenizers trained on it (offline)."""
import pytest

from megatron_omni.data.tokenizer import load_tokenizer
from omni_data_prep.make_demo_corpus import demo_documents, make_demo_corpus
from omni_data_prep.train_tokenizer import train_tokenizer


@pytest.fixture(scope="session")
def tricky_texts():
    """Texts the demo corpus lacks: media tokens, whitespace runs, newlines, accents, CJK, emoji."""
    return ["an <image> and a <video>, then<audio>.",
            "  two  leading spaces\n\tand a tab\nnew line ",
            "ünïcödé 漢字 emoji 🙂 done"]


@pytest.fixture(scope="session")
def documents(tricky_texts):
    """Demo documents with the tricky texts among them, in a fixed order."""
    docs = demo_documents(120, seed=1)
    return docs[:40] + tricky_texts + docs[40:]


@pytest.fixture(scope="session")
def spm_path(tmp_path_factory):
    """A 400-piece BPE SentencePiece model trained on the demo corpus."""
    root = tmp_path_factory.mktemp("spm")
    corpus = make_demo_corpus(root / "corpus.jsonl", num_docs=500, seed=0)
    return train_tokenizer([str(corpus)], str(root / "tok"), vocab_size=400)


@pytest.fixture(scope="session")
def tokenizer(spm_path):
    return load_tokenizer(spm_path)


@pytest.fixture(scope="session")
def hf_dir(tokenizer, tmp_path_factory):
    """Hugging Face files exported from the SentencePiece model."""
    return tokenizer.save_hf_files(tmp_path_factory.mktemp("hf"))
