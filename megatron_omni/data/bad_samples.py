"""Bad samples: the reasons a record or sample is skipped, the exception that skips one, and the
counter that tallies skips per reason (or, strict, stops at the first with the place named).

Offline preprocessing (data_prep) skips raw records it cannot turn into samples; the training
loader skips prepared samples it cannot read. Both raise `SkipSample(reason, detail)` where the
problem is found and hand it to a `SkipCounter` where the place (file and line, shard and key)
is known. Reason names appear verbatim in manifests, summaries and the `data/skipped/<reason>`
metrics, so they never change.
"""
from __future__ import annotations

import collections
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)

REASONS = {
    "malformed_json": "a jsonl line that is not a JSON object",
    "invalid_utf8": "text that is not valid UTF-8",
    "missing_key": "a required record field is absent",
    "bad_field": "a record field of the wrong type or value",
    "non_string": "the text field of a text record is not a string",
    "bad_record": "an OCR document record without an image path and valid text regions",
    "empty_text": "no text to train on: a blank text field, or no text token is a target",
    "missing_file": "a media file (or tar member) that a raw record names does not exist",
    "missing_member": "a prepared sample's tar lacks its metadata or one of its media",
    "bad_metadata": "a prepared sample's metadata is unreadable or disagrees with its files",
    "placeholder_mismatch": "the media placeholders differ from the media items in number or kind",
    "corrupt_image": "an image that does not decode, or not to the size its metadata says",
    "corrupt_video": "a video (or its stored frames) that does not decode",
    "corrupt_audio": "audio that does not decode, or is empty, multi-channel or non-finite",
    "truncated_audio": "audio shorter than its declared duration or sample count",
    "wrong_sample_rate": "audio at another sample rate than declared, or below the minimum",
    "too_long": "a sample whose first media item is longer than a packed row",
}
"""Every skip reason, with what it means."""

PREPARE_SKIP_REASONS = ("malformed_json", "invalid_utf8", "missing_key", "bad_field",
                        "empty_text", "missing_file", "corrupt_image", "corrupt_audio",
                        "truncated_audio", "wrong_sample_rate", "corrupt_video",
                        "placeholder_mismatch")
"""Reasons data_prep's multimodal CLIs skip a raw record for."""

TEXT_SKIP_REASONS = ("malformed_json", "missing_key", "empty_text", "invalid_utf8", "non_string")
"""Reasons data_prep's text preprocessing skips a record for."""

OCR_SKIP_REASONS = ("bad_record", "missing_file", "corrupt_image")
"""Reasons data_prep's OCR corruption skips a document record for."""

READ_SKIP_REASONS = ("missing_member", "bad_metadata", "empty_text", "placeholder_mismatch",
                     "corrupt_image", "corrupt_video", "corrupt_audio", "truncated_audio",
                     "wrong_sample_rate")
"""Reasons the training datasets skip a prepared sample (or text document) for."""

LOADER_SKIP_REASONS = READ_SKIP_REASONS + ("too_long",)
"""Every reason the loader skips a sample for (the order of its skip metrics)."""

LOGGED_PER_REASON = 5
"""Skips logged per reason by a logging SkipCounter; the rest are only counted."""


class SkipSample(Exception):
    """A record or sample that cannot be used; `reason` is a key of REASONS."""

    def __init__(self, reason: str, detail: str):
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class BadSampleError(ValueError):
    """A skip under strict mode; the message names the place (file and line, or shard and
    key), the reason and the detail."""


class SkipCounter:
    """Skips per reason (`counts`). `skip` raises BadSampleError instead when `strict`, and
    logs the first `log_first` skips of each reason."""

    def __init__(self, strict: bool = False, log_first: int = LOGGED_PER_REASON):
        self.strict, self.log_first = strict, log_first
        self.counts: collections.Counter = collections.Counter()

    def skip(self, err: SkipSample, where: str) -> None:
        """Count `err`, found at `where`; under strict raise BadSampleError naming both."""
        message = f"{where}: {err}"
        if self.strict:
            raise BadSampleError(message) from None
        self.counts[err.reason] += 1
        if self.counts[err.reason] <= self.log_first:
            log.warning("skipping bad sample %s", message)

    def table(self, reasons: Iterable[str]) -> dict[str, int]:
        """The count of each of `reasons`, in that order, zeros included."""
        return {reason: self.counts[reason] for reason in reasons}
