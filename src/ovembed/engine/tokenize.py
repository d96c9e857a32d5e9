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
        self._tok = Tokenizer.from_file(str(path))
        # Padding is done by the engine per batch; truncation here keeps the closing special token.
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_length)

    def encode(self, texts: list[str], truncate: bool = True) -> list[list[int]]:
        """Token ids per text, special tokens included, at most max_length each."""
        encodings = self._tok.encode_batch(texts, add_special_tokens=True)
        if not truncate:
            for i, enc in enumerate(encodings):
                if enc.overflowing:
                    total = len(enc.ids) + sum(len(o.ids) for o in enc.overflowing)
                    raise OvembedError(
                        ErrorKind.INPUT_TOO_LONG,
                        f"text {i} has about {total} tokens, more than the model's max length "
                        f"{self.max_length}; shorten it or allow truncation",
                    )
        return [enc.ids for enc in encodings]

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)
