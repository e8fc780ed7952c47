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

from megatron_omni.data.sample_format import (Manifest, Placeholder, iter_tar_groups,
                                              split_placeholders)
from omni_data_prep.multimodal.media import load_image, read_bytes
from omni_data_prep.multimodal.runner import (Prepared, RecordContext, SampleSource, SkipSample,
                                              common_parser, field_of, run, run_cli, text_of)
from omni_data_prep.text_records import Chunk, read_chunks

_TAR_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_TAR_IMAGE = "__image_bytes__"


@dataclass
class ImageCaptionSource(SampleSource):
    """Options: the record keys of the image path and the caption (jsonl; for tars the
    caption key is looked up in the sample's .json when it has no .txt)."""

    image_key: str = "image_path"
    caption_key: str = "caption"

    kind = "image_caption"
    input_suffixes = (".jsonl", ".json", ".tar")

    def chunks(self, paths: Sequence[Path], samples_per_shard: int) -> Iterator[Chunk]:
        for path in paths:
            if path.suffix == ".tar":
                yield from _tar_chunks(path, samples_per_shard)
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


def _tar_chunks(path: Path, samples_per_shard: int) -> Iterator[Chunk]:
    records = []
    for key, fields in iter_tar_groups(path):
        records.append((key, fields))
        if len(records) == samples_per_shard:
            yield Chunk(str(path), False, records)
            records = []
    if records:
        yield Chunk(str(path), False, records)


def prepare_image_captions(inputs: Sequence[str], tokenizer: str | Path, output_dir: str | Path,
                           image_key: str = "image_path", caption_key: str = "caption",
                           **run_options) -> Manifest:
    """Preprocess image–caption jsonl files and/or webdataset tars (glob patterns `inputs`)
    into `output_dir`; `run_options` (workers, samples_per_shard, strict, media_root, progress)
    go to `runner.run`. Returns the Manifest."""
    return run(ImageCaptionSource(image_key, caption_key), inputs, tokenizer, output_dir,
               **run_options)


def main(argv: Sequence[str] | None = None) -> Manifest:
    """Run the CLI; returns the Manifest."""
    parser = common_parser("python -m omni_data_prep.multimodal.image_caption",
                           "Image–caption pairs (jsonl or webdataset tars) -> multimodal shards.")
    parser.add_argument("--image-key", default="image_path",
                        help="jsonl key of the image path (default: image_path)")
    parser.add_argument("--caption-key", default="caption",
                        help="key of the caption (default: caption)")
    args = parser.parse_args(argv)
    return run_cli(ImageCaptionSource(args.image_key, args.caption_key), args)


if __name__ == "__main__":
    main()
