"""Documents for the RAG client: reading them from files (text, JSON rows, PDF, HTML), folders or stdin, and cutting
them into token windows."""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ovembed.errors import OvembedError, validation

TEXT_SUFFIXES = (".txt", ".md")
HTML_SUFFIXES = (".html", ".htm")
SUPPORTED = (*TEXT_SUFFIXES, ".jsonl", ".json", ".pdf", *HTML_SUFFIXES)
DOCUMENTS_EXTRA = "pip install 'ovembed[documents]'"
# Elements whose text is not the page's: code, styling, and what a browser does not show.
HIDDEN_TAGS = ("script", "style", "noscript", "template", "head", "svg", "iframe", "object")
# Elements that start a new line when a browser renders them (the rest is inline: no break inside a sentence).
BLOCK_TAGS = ("address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption", "figure",
              "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p",
              "pre", "section", "table", "tr", "ul", "caption")

Note = Callable[[str], None]


@dataclass
class Document:
    id: str
    text: str
    metadata: dict = field(default_factory=dict)


def _stderr_note(message: str) -> None:
    print(f"ovembed ingest: {message}", file=sys.stderr)


def read_documents(path: str, note: Note = _stderr_note) -> list[Document]:
    """Documents from a file, a folder of files, or '-' (stdin as JSON lines). A file is one document
    (.txt, .md, .pdf, .html/.htm; another suffix if it is UTF-8 text) or rows (.jsonl: one JSON object a line;
    .json: an array of them), each row {"id"|"_id", "text", "title"?, "metadata"?}. In a folder, files of other
    types are skipped with a `note`, and hidden files and folders (.git) are left alone. Everything is read and
    checked before anything is written, so a bad file leaves the store untouched."""
    if path == "-":
        return list(_jsonl(sys.stdin.read().splitlines(), "stdin"))
    root = Path(path).expanduser()
    if not root.exists():
        raise validation(f"{path}: no such file or folder")
    files = _folder_files(root, note) if root.is_dir() else [root]
    docs: list[Document] = []
    for file in files:
        docs.extend(_read_file(file, str(file.relative_to(root)) if root.is_dir() else file.name, note))
    if not docs:
        raise validation(f"{path}: no documents found ({' '.join(SUPPORTED)})")
    return docs


def _folder_files(root: Path, note: Note) -> list[Path]:
    """The folder's files of the supported types, in a stable order. Files of other types are skipped, not
    refused: a folder is rarely curated file by file (images, archives, build output beside the documents), and
    refusing would make it unusable without a copy; the note says what was left out so nothing goes missing
    unseen."""
    files, skipped = [], []
    for top, folders, names in os.walk(root):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in sorted(n for n in names if not n.startswith(".")):
            (files if Path(name).suffix.lower() in SUPPORTED else skipped).append(Path(top) / name)
    if skipped:
        shown = ", ".join(str(p.relative_to(root)) for p in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        note(f"skipped {len(skipped)} file{'s' if len(skipped) > 1 else ''} of other types in {root} ({shown}); "
             f"ingest reads {' '.join(SUPPORTED)}")
    return files


def _read_file(file: Path, doc_id: str, note: Note) -> list[Document]:
    suffix = file.suffix.lower()
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise validation(f"{file}: cannot read ({exc.strerror})") from None
    metadata = {"path": str(file)}
    if suffix == ".pdf":
        return [_pdf(file, data, doc_id, metadata, note)]
    if suffix in HTML_SUFFIXES:
        return [_html(file, data, doc_id, metadata)]
    if suffix not in (*TEXT_SUFFIXES, ".jsonl", ".json") and _binary(data):
        raise validation(f"{file}: a binary file, not one of the types ingest reads: .txt and .md (or any UTF-8 "
                         f"text), .jsonl and .json rows, .pdf, .html and .htm")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise validation(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if suffix == ".jsonl":
        return list(_jsonl(text.splitlines(), str(file)))
    if suffix == ".json":
        return _json_array(text, str(file))
    return [Document(doc_id, text, metadata)]


def _binary(data: bytes) -> bool:
    """Git's test (a NUL byte in the first 8000), or bytes that are not UTF-8."""
    if b"\0" in data[:8000]:
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _optional(module: str, file: Path, kind: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise validation(f"{file}: reading {kind} needs the documents extra ({module} is missing): "
                         f"{DOCUMENTS_EXTRA}") from None


def _pdf(file: Path, data: bytes, doc_id: str, metadata: dict, note: Note) -> Document:
    """The text layer of every page, pages apart by a blank line (pypdf)."""
    pypdf = _optional("pypdf", file, "PDF files")
    # pypdf logs what it repairs in a damaged file ("EOF marker not found"): noise beside ingest's own message.
    pypdf_log = logging.getLogger("pypdf")
    level = pypdf_log.level
    pypdf_log.setLevel(logging.ERROR)
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise validation(f"{file}: an encrypted PDF; save a decrypted copy and ingest that")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
        title = reader.metadata.title if reader.metadata else None
    except OvembedError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged PDF fails in many ways inside pypdf; each is bad input
        raise validation(f"{file}: not a readable PDF ({type(exc).__name__}: {exc})") from None
    finally:
        pypdf_log.setLevel(level)
    text = "\n\n".join(p for p in pages if p)
    if not text:
        note(f"{file}: no text in its {len(pages)} page(s) (a scanned PDF? run OCR on it first)")
    metadata = {**metadata, "pages": len(pages), **({"title": str(title)} if title else {})}
    return Document(doc_id, text, metadata)


def _html(file: Path, data: bytes, doc_id: str, metadata: dict) -> Document:
    """The text a browser shows (Beautiful Soup; the encoding from the page's own declaration), a line per block
    element, and the <title> as metadata."""
    bs4 = _optional("bs4", file, "HTML files")
    soup = bs4.BeautifulSoup(data, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup.find_all(HIDDEN_TAGS):
        tag.decompose()
    for tag in soup.find_all(BLOCK_TAGS):
        tag.insert_before("\n")
        tag.insert_after("\n")
    for cell in soup.find_all(("td", "th")):
        cell.insert_after(" ")
    lines = (" ".join(line.split()) for line in soup.get_text().splitlines())
    return Document(doc_id, "\n".join(line for line in lines if line), {**metadata, **({"title": title} if title else {})})


def _jsonl(lines: list[str], name: str) -> Iterator[Document]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise validation(f"{name}, line {number}: not JSON ({exc})") from None
        yield _row(row, f"{name}, line {number}")


def _json_array(text: str, name: str) -> list[Document]:
    try:
        rows = json.loads(text)
    except ValueError as exc:
        raise validation(f"{name}: not JSON ({exc})") from None
    if not isinstance(rows, list):
        raise validation(f'{name}: expected an array of {{"id", "text"}} objects, not a JSON {type(rows).__name__}'
                         " (one object a line is a .jsonl file)")
    return [_row(row, f"{name}, item {number}") for number, row in enumerate(rows, 1)]


def _row(row, where: str) -> Document:
    """One row of a .jsonl or .json file: {"id"|"_id", "text", "title"?, "metadata"?} (BEIR's corpus rows too)."""
    doc_id = row.get("id", row.get("_id")) if isinstance(row, dict) else None
    if doc_id is None or not isinstance(row.get("text"), str):
        raise validation(f'{where}: needs "id" (or "_id") and a string "text"')
    if not isinstance(row.get("metadata") or {}, dict):
        raise validation(f'{where}: "metadata" must be an object')
    metadata = dict(row.get("metadata") or {})
    if row.get("title"):
        metadata["title"] = row["title"]
    return Document(str(doc_id), row["text"], metadata)


def chunk_spans(text: str, offsets: list[tuple[int, int]], chunk_tokens: int, overlap: int) -> list[str]:
    """Windows of `chunk_tokens` tokens, `overlap` shared between neighbours, cut at token boundaries."""
    if not offsets:
        return [text.strip()] if text.strip() else []
    step = max(chunk_tokens - overlap, 1)
    chunks, start = [], 0
    while True:
        end = min(start + chunk_tokens, len(offsets))
        if piece := text[offsets[start][0] : offsets[end - 1][1]].strip():
            chunks.append(piece)
        if end == len(offsets):
            return chunks
        nxt = start + step
        # Start the next window at a word's first token, not inside a word split into sub-words.
        while nxt > start + 1 and not _word_start(text, offsets[nxt][0]):
            nxt -= 1
        start = nxt


def _word_start(text: str, offset: int) -> bool:
    """Whether a token at `offset` begins a word: after whitespace (WordPiece, BPE), or on the whitespace itself
    (SentencePiece's Metaspace, as XLM-R and BGE-M3 tokenize, counts a word's leading space in its first token)."""
    return offset == 0 or text[offset - 1].isspace() or text[offset].isspace()
