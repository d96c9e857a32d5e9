"""`ovembed eval`'s inputs: BEIR-layout retrieval folders and STS pair files (plain or gzip), and which
retrieval folders of one collection pair up for cross-lingual runs."""

from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ovembed.errors import OvembedError, validation

MAX_SUGGESTIONS = 12  # dataset folders named in the error for a parent folder (xquad/ holds 12)


@dataclass
class RetrievalSet:
    name: str
    corpus: dict[str, str]  # id -> title + " " + text (the title only when there is one)
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}


def _open_text(folder: Path, name: str) -> io.TextIOBase:
    """`name` or `name.gz` in folder, as text."""
    plain, packed = folder / name, folder / f"{name}.gz"
    if plain.is_file():
        return open(plain, encoding="utf-8", newline="")
    if packed.is_file():
        return io.TextIOWrapper(gzip.open(packed), encoding="utf-8", newline="")
    raise validation(f"{folder}: no {name} (or {name}.gz)")


def is_retrieval(folder: Path) -> bool:
    return any((folder / f).is_file() for f in ("corpus.jsonl", "corpus.jsonl.gz"))


def load_retrieval(folder: str | Path) -> RetrievalSet:
    folder = Path(folder)
    corpus, queries, qrels = {}, {}, {}
    try:
        with _open_text(folder, "corpus.jsonl") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    title, text = (row.get("title") or "").strip(), row.get("text") or ""
                    corpus[str(row["_id"])] = f"{title} {text}" if title else text
        with _open_text(folder, "queries.jsonl") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    queries[str(row["_id"])] = row["text"]
        with _open_text(folder, "qrels.tsv") as fh:
            reader = csv.reader(fh, delimiter="\t")
            next(reader, None)  # header: query-id corpus-id score
            for qid, did, score in reader:
                qrels.setdefault(qid, {})[did] = int(score)
    except (ValueError, KeyError, OSError) as exc:
        raise validation(f"{folder}: not a valid BEIR folder ({type(exc).__name__}: {exc})") from None
    qrels = {q: docs for q, docs in qrels.items() if q in queries}
    if not corpus or not qrels:
        raise validation(f"{folder}: empty corpus or no qrels for its queries")
    return RetrievalSet(folder.name, corpus, queries, qrels)


def is_sts(folder: Path, split: str = "pairs.tsv") -> bool:
    return any((folder / f).is_file() for f in (split, f"{split}.gz"))


def not_a_dataset(folder: Path) -> OvembedError:
    """The error for a folder that holds no dataset itself: the datasets found inside it (a collection such as
    xquad/, whose languages are the datasets) as `--data` suggestions, else what a dataset folder holds."""
    inside = []
    for pattern in ("*/", "*/*/"):  # a collection (xquad/), or a folder of collections (data/)
        inside = inside or sorted(f for f in folder.glob(pattern) if f.is_dir() and (is_retrieval(f) or is_sts(f)))
    if not inside:
        return validation(f"{folder}: not a dataset folder: a BEIR folder holds corpus.jsonl, queries.jsonl and "
                          "qrels.tsv, an STS folder pairs.tsv (each may be .gz), and no folder inside it does either")
    shown = " ".join(f"--data {f}" for f in inside[:MAX_SUGGESTIONS])
    more = f" (and {len(inside) - MAX_SUGGESTIONS} more)" if len(inside) > MAX_SUGGESTIONS else ""
    return validation(f"{folder}: a folder of {len(inside)} datasets, not a dataset itself; name the ones to "
                      f"score: {shown}{more}")


def load_sts(folder: str | Path, split: str = "pairs.tsv") -> tuple[list[str], list[str], np.ndarray]:
    folder = Path(folder)
    if not is_sts(folder, split):
        raise not_a_dataset(folder) if split == "pairs.tsv" else validation(f"{folder}: no {split} (or {split}.gz)")
    with _open_text(folder, split) as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    try:
        return [r["sentence1"] for r in rows], [r["sentence2"] for r in rows], np.array([float(r["score"]) for r in rows])
    except (KeyError, TypeError, ValueError) as exc:
        raise validation(f"{folder}/{split}: needs columns sentence1, sentence2, score ({exc})") from None


def dataset_name(folder: Path) -> str:
    return f"{folder.parent.name}/{folder.name}"


def cross_lingual_pairs(folders: list[Path]) -> list[tuple[Path, Path]]:
    """(queries folder, corpus folder) for every ordered pair of retrieval folders of the same collection
    (siblings, e.g. xquad/de and xquad/en): their ids are shared, so one's qrels hold for the other's corpus."""
    retrieval = [f for f in folders if is_retrieval(f)]
    return [(q, c) for q in retrieval for c in retrieval if q != c and q.parent.resolve() == c.parent.resolve()]
