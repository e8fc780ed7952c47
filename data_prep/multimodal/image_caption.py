"""Image–caption pairs -> multimodal shards (sample_format): `<image>` then the caption.

    python -m omni_data_prep.multimodal.image_caption --input 'pairs/*.jsonl' \\
        --tokenizer tok.model --output-dir data/captions --workers 8

Input: jsonl records with an image path and a caption (the plan's
{"image_path", "caption", "clip_score", "source"}; keys set by --image-key/--caption-key), or
webdataset tars whose samples hold an image (.jpg/.jpeg/.png/.webp) and a caption (.txt, or
the caption key of .json). The caption and `<eod>` are training targets.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from megatron_omni.data.bad_samples import SkipSample
from megatron_omni.data.sample_format import Manifest, Placeholder, split_placeholders
from omni_data_prep.multimodal import cli
from omni_data_prep.multimodal.media import load_image, read_bytes
from omni_data_prep.multimodal.runner import (Prepared, RecordContext, SampleSource, field_of,
                                              option, text_of)
from omni_data_prep.text_records import Chunk, chunked, read_chunks

_TAR_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_TAR_IMAGE = "__image_bytes__"


@dataclass
class ImageCaptionSource(SampleSource):
    """Options: the record keys of the image path and the caption (jsonl; for tars the
    caption key is looked up in the sample's .json when it has no .txt)."""

    image_key: str = option("image_path", "jsonl key of the image path")
    caption_key: str = option("caption", "key of the caption")

    kind = "image_caption"
    description = "Image–caption pairs (jsonl or webdataset tars) -> multimodal shards."
    input_suffixes = (".jsonl", ".json", ".tar")

    def chunks(self, paths: Sequence[Path], samples_per_shard: int) -> Iterator[Chunk]:
        for path in paths:
            if path.suffix == ".tar":
                # Imported here: sample_reader imports the config package, and with it torch
                # (seconds of start-up that a jsonl run does not need).
                from megatron_omni.data.sample_reader import iter_tar_groups

                yield from chunked(path, False, iter_tar_groups(path), samples_per_shard)
            else:
                yield from read_chunks([path], "", samples_per_shard)

    def parse(self, raw: object, chunk: Chunk) -> dict:
        if chunk.is_jsonl:
            return super().parse(raw, chunk)
        image = next((raw[f] for f in raw if f.rsplit(".", 1)[-1].lower() in _TAR_IMAGE_EXTS),
                     None)
        if image is None:
            raise SkipSample("missing_file", f"no image member (fields: {sorted(raw)})")
        if "txt" in raw:
            try:
                return {_TAR_IMAGE: image, self.caption_key: raw["txt"].decode("utf-8")}
            except UnicodeDecodeError as err:
                raise SkipSample("invalid_utf8", f"txt: {err}") from None
        if "json" not in raw:
            raise SkipSample("missing_key", f"no .txt or .json caption (fields: {sorted(raw)})")
        record = super().parse(raw["json"], chunk)
        return {**record, _TAR_IMAGE: image}

    def prepare(self, record: dict, ctx: RecordContext) -> Prepared:
        caption = text_of(record, self.caption_key)
        if _TAR_IMAGE in record:
            data, where = record[_TAR_IMAGE], "image member"
        else:
            path = ctx.resolve(field_of(record, self.image_key, str), self.image_key)
            data, where = read_bytes(path), str(path)
        image = load_image(data, where)
        return Prepared([Placeholder("image"), *split_placeholders(caption, loss=True)], [image])


def main(argv: Sequence[str] | None = None) -> Manifest:
    """The `image_caption` command (cli); returns the Manifest."""
    return cli.main("image_caption", argv)


if __name__ == "__main__":
    main()
