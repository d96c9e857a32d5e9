"""Documents for the RAG client: reading them from files, folders or stdin, and cutting them into token windows."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ovembed.errors import validation

TEXT_SUFFIXES = (".txt", ".md")


@dataclass
class Document:
    id: str
    text: str
    metadata: dict = field(default_factory=dict)


def read_documents(path: str) -> list[Document]:
    """Documents from a .txt/.md file (one document), a .jsonl file (rows {"id"|"_id", "text", "title"?,
    "metadata"?}), a folder of those, or '-' (stdin as JSON lines). Everything is read and checked before
    anything is written, so a bad file leaves the store untouched."""
    if path == "-":
        return list(_jsonl(sys.stdin.read().splitlines(), "stdin"))
    root = Path(path).expanduser()
    if not root.exists():
        raise validation(f"{path}: no such file or folder")
    files = sorted(p for p in root.rglob("*") if p.suffix in (*TEXT_SUFFIXES, ".jsonl")) if root.is_dir() else [root]
    docs: list[Document] = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise validation(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise validation(f"{file}: cannot read ({exc.strerror})") from None
        if file.suffix == ".jsonl":
            docs.extend(_jsonl(text.splitlines(), str(file)))
        elif file.suffix in TEXT_SUFFIXES or not root.is_dir():
            doc_id = str(file.relative_to(root)) if root.is_dir() else file.name
            docs.append(Document(doc_id, text, {"path": str(file)}))
    if not docs:
        raise validation(f"{path}: no documents found (.txt, .md or .jsonl)")
    return docs


def _jsonl(lines: list[str], name: str) -> Iterator[Document]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise validation(f"{name}, line {number}: not JSON ({exc})") from None
        doc_id = row.get("id", row.get("_id")) if isinstance(row, dict) else None
        if doc_id is None or not isinstance(row.get("text"), str):
            raise validation(f'{name}, line {number}: needs "id" (or "_id") and a string "text"')
        metadata = dict(row.get("metadata") or {})
        if row.get("title"):
            metadata["title"] = row["title"]
        yield Document(str(doc_id), row["text"], metadata)


def chunk_spans(text: str, offsets: list[tuple[int, int]], chunk_tokens: int, overlap: int) -> list[str]:
    """Windows of `chunk_tokens` tokens, `overlap` shared between neighbours, cut at token boundaries."""
    if not offsets:
        return [text.strip()] if text.strip() else []
    step = max(chunk_tokens - overlap, 1)
    chunks, start = [], 0
    while True:
        end = min(start + chunk_tokens, len(offsets))
        chunks.append(text[offsets[start][0] : offsets[end - 1][1]])
        if end == len(offsets):
            return chunks
        nxt = start + step
        # Start the next window at a word's first token, not inside a word split into sub-words.
        while nxt > start + 1 and offsets[nxt][0] > 0 and not text[offsets[nxt][0] - 1].isspace():
            nxt -= 1
        start = nxt
