"""Interleaved image–text documents -> multimodal shards (sample_format).

    python -m omni_data_prep.multimodal.interleaved --input 'omnicorpus/*.jsonl' \\
        --tokenizer tok.model --output-dir data/interleaved --workers 8

Input: jsonl documents in the OmniCorpus/OBELICS layout: two lists of equal length, `texts` and
`images`, where position i holds a text (and null image) or an image path (and null text), in
reading order. Each image becomes `<image>` at its place; every text token and `<eod>` is a
training target. A document with one bad image is skipped whole (counted by that image's
reason).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from megatron_omni.data.bad_samples import SkipSample
from megatron_omni.data.sample_format import Manifest, Placeholder, Text, split_placeholders
from omni_data_prep.multimodal import cli
from omni_data_prep.multimodal.media import load_image, read_bytes
from omni_data_prep.multimodal.runner import (Prepared, RecordContext, SampleSource, field_of,
                                              option)


@dataclass
class InterleavedSource(SampleSource):
    """Options: the record keys of the aligned text and image lists."""

    texts_key: str = option("texts", "key of the list of texts")
    images_key: str = option("images", "key of the list of image paths")

    kind = "interleaved"
    description = "Interleaved image–text documents -> multimodal shards."

    def prepare(self, record: dict, ctx: RecordContext) -> Prepared:
        texts = field_of(record, self.texts_key, list)
        images = field_of(record, self.images_key, list)
        if len(texts) != len(images):
            raise SkipSample("bad_field", f"{len(texts)} {self.texts_key} but "
                                          f"{len(images)} {self.images_key}")
        pieces, media = [], []
        for i, (text, image) in enumerate(zip(texts, images)):
            if (text is None) == (image is None):
                raise SkipSample("bad_field", f"position {i} must hold exactly one of a text and "
                                              f"an image")
            if text is not None:
                if not isinstance(text, str):
                    raise SkipSample("bad_field", f"{self.texts_key}[{i}] is "
                                                  f"{type(text).__name__}")
                pieces.extend(split_placeholders(text, loss=True))
            else:
                path = ctx.resolve(image, f"{self.images_key}[{i}]")
                media.append(load_image(read_bytes(path), str(path)))
                pieces.append(Placeholder("image"))
        if not any(isinstance(p, Text) and p.text.strip() for p in pieces):
            raise SkipSample("empty_text", "the document has no text")
        return Prepared(pieces, media)


def main(argv: Sequence[str] | None = None) -> Manifest:
    """The `interleaved` command (cli); returns the Manifest."""
    return cli.main("interleaved", argv)


if __name__ == "__main__":
    main()
