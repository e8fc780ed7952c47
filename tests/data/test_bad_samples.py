"""The one bad-sample system: reasons, the skip exception, the counter."""
import logging

import pytest

from megatron_omni.data.bad_samples import (LOADER_SKIP_REASONS, OCR_SKIP_REASONS,
                                            PREPARE_SKIP_REASONS, READ_SKIP_REASONS, REASONS,
                                            TEXT_SKIP_REASONS, BadSampleError, SkipCounter,
                                            SkipSample)

ALL = (PREPARE_SKIP_REASONS, TEXT_SKIP_REASONS, OCR_SKIP_REASONS, READ_SKIP_REASONS,
       LOADER_SKIP_REASONS)


def test_every_reason_is_documented_and_used():
    for reasons in ALL:
        assert len(set(reasons)) == len(reasons) and set(reasons) <= set(REASONS)
    assert set(REASONS) == set().union(*ALL)
    assert all(doc and "\n" not in doc for doc in REASONS.values())
    with pytest.raises(ValueError, match="unknown skip reason 'nope'"):
        SkipSample("nope", "")


def test_counter_counts_logs_the_first_few_and_strict_names_the_place(caplog):
    counter = SkipCounter(log_first=2)
    with caplog.at_level(logging.WARNING, logger="megatron_omni.data.bad_samples"):
        for i in range(4):
            counter.skip(SkipSample("corrupt_image", "bad bytes"), f"s.tar key {i}")
        counter.skip(SkipSample("too_long", "no fit"), "s.tar key 9")
    assert counter.counts == {"corrupt_image": 4, "too_long": 1}
    assert counter.table(("too_long", "empty_text")) == {"too_long": 1, "empty_text": 0}
    assert [r.getMessage() for r in caplog.records] == [
        "skipping bad sample s.tar key 0: corrupt_image: bad bytes",
        "skipping bad sample s.tar key 1: corrupt_image: bad bytes",
        "skipping bad sample s.tar key 9: too_long: no fit"]
    strict = SkipCounter(strict=True)
    with pytest.raises(BadSampleError, match=r"^f\.jsonl:3: missing_key: no 'x'$"):
        strict.skip(SkipSample("missing_key", "no 'x'"), "f.jsonl:3")
    assert not strict.counts
