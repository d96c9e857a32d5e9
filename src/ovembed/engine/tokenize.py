"""Tokenization with HF `tokenizers` (Rust): texts -> token id lists, truncated or refused."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from ovembed.errors import ErrorKind, OvembedError


class TextTokenizer:
    def __init__(self, folder: Path, max_length: int):
        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise OvembedError(ErrorKind.MODEL_INVALID, f"{folder} has no tokenizer.json")
        self.max_length = max_length
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - `tokenizers` raises plain Exception for a malformed file
            raise OvembedError(ErrorKind.MODEL_INVALID, f"{folder}: cannot read tokenizer.json: {exc}") from None
        # Padding is done by the engine per batch; truncation here keeps the closing special token.
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_length)
        self._untruncated: Tokenizer | None = None

    def encode(self, texts: list[str], truncate: bool = True) -> list[list[int]]:
        """Token ids per text, special tokens included, at most max_length each."""
        return self.encode_with_lengths(texts, truncate)[0]

    def encode_with_lengths(self, texts: list[str], truncate: bool = True) -> tuple[list[list[int]], list[int]]:
        """(token ids, untruncated length) per text; with truncate=False a text over max length raises."""
        encodings = self._tok.encode_batch(texts, add_special_tokens=True)
        ids, full = [], []
        for i, enc in enumerate(encodings):
            total = len(enc.ids) + sum(len(o.ids) for o in enc.overflowing)
            if total > len(enc.ids) and not truncate:
                raise OvembedError(
                    ErrorKind.INPUT_TOO_LONG,
                    f"text {i} has about {total} tokens, more than the model's max length "
                    f"{self.max_length}; shorten it or allow truncation",
                )
            ids.append(enc.ids)
            full.append(total)
        return ids, full

    def offsets(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """Character spans of each text's tokens (no special tokens, no truncation), for chunking."""
        if self._untruncated is None:
            self._untruncated = Tokenizer.from_str(self._tok.to_str())
            self._untruncated.no_truncation()
        return [enc.offsets for enc in self._untruncated.encode_batch(texts, add_special_tokens=False)]

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)
