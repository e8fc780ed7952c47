"""The synthetic demo corpus is deterministic and well-formed."""
import json

from omni_data_prep.make_demo_corpus import demo_documents, main


def test_same_seed_same_file(tmp_path):
    a = main(["--out", str(tmp_path / "a.jsonl"), "--num-docs", "300", "--seed", "3"])
    b = main(["--out", str(tmp_path / "b.jsonl"), "--num-docs", "300", "--seed", "3"])
    assert a.read_bytes() == b.read_bytes()
    texts = [json.loads(line)["text"] for line in a.read_text().splitlines()]
    assert texts == demo_documents(300, seed=3)
    assert len(set(texts)) == 300 and all(texts)


def test_seed_changes_corpus_and_sums_are_true():
    assert demo_documents(50, seed=0) != demo_documents(50, seed=1)
    sums = [s for doc in demo_documents(50) for s in doc.split(". ") if " + " in s]
    assert sums
    for sentence in sums:
        left, right = sentence.rstrip(".").split(" = ")
        a, b = left.split(" + ")
        assert int(a) + int(b) == int(right)
