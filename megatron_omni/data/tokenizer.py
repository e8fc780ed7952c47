"""Text tokenizers for omni data: a SentencePiece `.model` or a Hugging Face `tokenizer.json`.

Both kinds must hold the omni special tokens (`OMNI_SPECIAL_TOKENS`) as single tokens:
`<image>`, `<video>` and `<audio>` mark where encoder embeddings go, `<pad>` pads and `<eod>` ends
every document in the indexed binaries. `load_tokenizer` picks the backend by file name.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

PAD_TOKEN = "<pad>"
EOD_TOKEN = "<eod>"
OMNI_SPECIAL_TOKENS = ("<image>", "<video>", "<audio>", PAD_TOKEN, EOD_TOKEN)


class Tokenizer(ABC):
    """Encode/decode text and look up the omni special tokens; build one with `load_tokenizer`.

    Attributes:
        path: the file the tokenizer was loaded from.
        special_ids: id of each token in `OMNI_SPECIAL_TOKENS`, keyed by the token text.
        pad_id: id of `<pad>`.
        eod_id: id of `<eod>`, appended to every document by data_prep/preprocess_text.py.
    """

    retrain_hint = ""

    def __init__(self, path: Path):
        self.path = path
        missing = [tok for tok in OMNI_SPECIAL_TOKENS if self._token_id(tok) is None]
        if missing:
            raise ValueError(
                f"tokenizer {path} lacks the omni special token(s) {', '.join(missing)}; each of "
                f"{', '.join(OMNI_SPECIAL_TOKENS)} must be a single token. {self.retrain_hint}")
        self.special_ids = {tok: self._token_id(tok) for tok in OMNI_SPECIAL_TOKENS}
        self.pad_id = self.special_ids[PAD_TOKEN]
        self.eod_id = self.special_ids[EOD_TOKEN]

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included (every id is below it)."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with no BOS/EOS added."""

    @abstractmethod
    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` of each text, in one call into the tokenizer library."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; `<pad>` and `<eod>` render as nothing."""
        return self._decode([i for i in ids if i != self.pad_id and i != self.eod_id])

    def save_hf_files(self, out_dir: str | Path) -> Path:
        """Write `tokenizer.json` + `tokenizer_config.json` so that
        `transformers.AutoTokenizer.from_pretrained(out_dir)` encodes text to the same ids.

        One difference remains: Hugging Face matches special tokens written literally in the text
        (the string "<eod>" becomes the `<eod>` id), where SentencePiece encodes it as plain text.
        Returns `out_dir`.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self._write_tokenizer_json(out_dir / "tokenizer.json")
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOD_TOKEN,
                  "pad_token": PAD_TOKEN}
        (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        return out_dir

    @abstractmethod
    def _token_id(self, token: str) -> int | None:
        """Id of `token` when it is one token of the vocabulary, else None."""

    @abstractmethod
    def _decode(self, ids: list[int]) -> str:
        """Backend decode."""

    @abstractmethod
    def _write_tokenizer_json(self, path: Path) -> None:
        """Write a Hugging Face tokenizer.json equivalent to this tokenizer."""


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model, e.g. one trained by data_prep/train_tokenizer.py."""

    retrain_hint = ("Train one that reserves them with `python -m omni_data_prep.train_tokenizer "
                    "--input <files> --model-prefix <prefix>`.")

    def __init__(self, path: Path):
        import sentencepiece

        self._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        super().__init__(path)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts, num_threads=1)

    def _token_id(self, token: str) -> int | None:
        token_id = self._sp.piece_to_id(token)
        return None if self._sp.is_unknown(token_id) else token_id

    def _decode(self, ids: list[int]) -> str:
        return self._sp.decode(ids)

    def _write_tokenizer_json(self, path: Path) -> None:
        # transformers >= 5 builds a fast tokenizer from a lone tokenizer.model following the
        # model's own normalizer spec and piece ids; transformers 4 picks a per-model converter
        # (Llama's renumbers ids 0-2), so it is not used here.
        import transformers
        from transformers import PreTrainedTokenizerFast

        if int(transformers.__version__.split(".")[0]) < 5:
            raise ImportError(f"exporting a SentencePiece tokenizer to Hugging Face files needs "
                              f"transformers >= 5 (found {transformers.__version__}); "
                              f"pip install 'transformers>=5'")
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copyfile(self.path, Path(tmp) / "tokenizer.model")
            fast = PreTrainedTokenizerFast.from_pretrained(tmp)
        fast.backend_tokenizer.save(str(path))


class HFJsonTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` serialization (`tokenizer.json`)."""

    retrain_hint = ("Add them with tokenizers' `Tokenizer.add_special_tokens([...])` and save the "
                    "file again, or train a SentencePiece tokenizer that reserves them with "
                    "`python -m omni_data_prep.train_tokenizer`.")

    def __init__(self, path: Path):
        import tokenizers

        self._tok = tokenizers.Tokenizer.from_file(str(path))
        super().__init__(path)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def _token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def _write_tokenizer_json(self, path: Path) -> None:
        shutil.copyfile(self.path, path)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a SentencePiece model (`*.model`) or a Hugging Face `tokenizer.json` (`*.json`).

    Raises FileNotFoundError for a missing file, ValueError for any other file type or when the
    tokenizer lacks one of `OMNI_SPECIAL_TOKENS` (the message says how to get them).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist")
    if path.suffix == ".model":
        return SentencePieceTokenizer(path)
    if path.suffix == ".json":
        return HFJsonTokenizer(path)
    raise ValueError(f"unsupported tokenizer file {path}: expected a SentencePiece model (*.model) "
                     f"or a Hugging Face tokenizer.json (*.json)")
