"""Tokenizer training (reserved special tokens, determinism), loading, and the HF export."""
import json
import random
import string

import pytest
import sentencepiece

from megatron_omni.data.tokenizer import OMNI_SPECIAL_TOKENS, load_tokenizer
from omni_data_prep.train_tokenizer import main as train_main


def test_special_tokens_reserved(tokenizer):
    ids = tokenizer.special_ids
    assert sorted(ids) == sorted(OMNI_SPECIAL_TOKENS)
    assert len(set(ids.values())) == len(ids)
    assert (tokenizer.pad_id, tokenizer.eod_id) == (ids["<pad>"], ids["<eod>"])
    for media in ("<image>", "<video>", "<audio>"):
        assert tokenizer.encode(media) == [ids[media]]
        assert tokenizer.encode(f"see {media}.").count(ids[media]) == 1
    # <pad> and <eod> are control symbols: their text is ordinary text, never the id.
    for control in ("<pad>", "<eod>"):
        assert ids[control] not in tokenizer.encode(f"x {control} y")


def test_roundtrip_and_no_unk(tokenizer, documents):
    for text in documents:
        ids = tokenizer.encode(text)
        assert 1 not in ids, "byte fallback: nothing encodes to <unk>"
        assert tokenizer.decode(ids + [tokenizer.eod_id, tokenizer.pad_id]) == text


def _train(tmp_path, name, *extra):
    rng = random.Random(0)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 7))) for _ in range(300)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(" ".join(rng.choices(words, k=8)) + "\n" for _ in range(600)))
    prefix = tmp_path / name / "tok"
    train_main(["--input", str(corpus), "--model-prefix", str(prefix), "--vocab-size", "350",
                *extra])
    return prefix


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_training_is_deterministic(tmp_path, model_type):
    a = _train(tmp_path, "a", "--model-type", model_type, "--max-sentences", "400")
    b = _train(tmp_path, "b", "--model-type", model_type, "--max-sentences", "400")
    assert a.with_suffix(".vocab").read_text() == b.with_suffix(".vocab").read_text()
    assert load_tokenizer(a.with_suffix(".model")).special_ids["<image>"] == 3


def test_missing_special_token_is_named(tmp_path):
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["the quick brown fox jumps over the lazy dog"] * 20),
        model_prefix=str(tmp_path / "plain"), vocab_size=100, hard_vocab_limit=False,
        user_defined_symbols=["<image>"], minloglevel=2)
    with pytest.raises(ValueError, match=r"<video>, <audio>, <pad>, <eod>.*train_tokenizer"):
        load_tokenizer(tmp_path / "plain.model")


def test_unsupported_tokenizer_file(tmp_path):
    (tmp_path / "vocab.txt").write_text("a\n")
    with pytest.raises(ValueError, match="unsupported tokenizer file"):
        load_tokenizer(tmp_path / "vocab.txt")
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "absent.model")


def test_hf_export_matches(tokenizer, hf_dir, documents, tricky_texts, tmp_path):
    from transformers import AutoTokenizer

    texts = documents[:5] + tricky_texts
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert (config["eos_token"], config["pad_token"]) == ("<eod>", "<pad>")
    from_json = load_tokenizer(hf_dir / "tokenizer.json")
    assert from_json.special_ids == tokenizer.special_ids
    assert from_json.vocab_size == tokenizer.vocab_size
    for folder in (hf_dir, from_json.save_hf_files(tmp_path / "again")):
        hf = AutoTokenizer.from_pretrained(folder)
        assert (hf.eos_token_id, hf.pad_token_id) == (tokenizer.eod_id, tokenizer.pad_id)
        for text in texts:
            ours = tokenizer.encode(text)
            assert hf.encode(text, add_special_tokens=False) == ours, text
            assert from_json.encode(text) == ours, text
            assert from_json.decode(ours + [tokenizer.eod_id]) == text
