"""Encoding texts for `ovembed eval`, with an on-disk cache: one file per (model, texts, output), so a rerun
or a second query set over the same corpus computes nothing again."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ovembed.embedders import Embedder
from ovembed.engine.outputs import SparseVector

DEFAULT_CACHE = Path.home() / ".cache" / "ovembed" / "eval"
BATCH = 64


@dataclass
class Encoded:
    """The outputs of one model for a list of texts; a field is None when it was not asked for."""

    dense: np.ndarray | None = None
    sparse: list[SparseVector] | None = None
    colbert: list[np.ndarray] | None = None

    def rows(self, start: int, end: int) -> Encoded:
        """The outputs of texts[start:end]."""
        return Encoded(None if self.dense is None else self.dense[start:end],
                       None if self.sparse is None else self.sparse[start:end],
                       None if self.colbert is None else self.colbert[start:end])


def model_key(embedder: Embedder) -> str:
    """What identifies a model's vectors: its fingerprint (its files' checksums), the same through a folder or a
    service; for a service too old to report one, its id at its URL."""
    if embedder.space.fingerprint:
        return embedder.space.fingerprint
    ident = json.dumps([embedder.space.model_ref, embedder.space.model_id, embedder.space.precision])
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _save(path: Path, output: str, values) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    if output == "dense":
        np.savez(tmp, dense=values)
    elif output == "sparse":
        lengths = [len(v["indices"]) for v in values]
        np.savez(tmp, lengths=np.asarray(lengths, np.int64),
                 indices=np.asarray([i for v in values for i in v["indices"]], np.int64),
                 values=np.asarray([x for v in values for x in v["values"]], np.float32))
    else:
        np.savez(tmp, lengths=np.asarray([len(v) for v in values], np.int64),
                 vectors=np.concatenate(values) if values else np.zeros((0, 0), np.float32))
    tmp.replace(path)  # a reader never sees half a file


def _load(path: Path, output: str):
    with np.load(path) as f:
        if output == "dense":
            return f["dense"]
        cuts = np.cumsum(f["lengths"])[:-1]
        if output == "sparse":
            return [{"indices": i.tolist(), "values": v.tolist()}
                    for i, v in zip(np.split(f["indices"], cuts), np.split(f["values"], cuts))]
        return np.split(f["vectors"], cuts)


def _compute(embedder: Embedder, texts: list[str], outputs: set[str], label: str) -> dict:
    """The outputs for texts, batched by length (as sentence-transformers does): a batch of similar lengths
    pads little, which makes a corpus of mixed lengths about twice as fast; results come back in text order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    parts = []
    for start in tqdm(range(0, len(texts), BATCH), desc=label, unit="batch", leave=False, disable=None):
        batch = [texts[i] for i in order[start : start + BATCH]]
        parts.append(embedder.encode(batch, dense="dense" in outputs, sparse="sparse" in outputs,
                                     colbert="colbert" in outputs))
    back = np.argsort(order)
    found = {}
    for output in outputs:
        if output == "dense":
            rows = (np.concatenate([p[0] for p in parts]) if parts
                    else np.zeros((0, embedder.space.dimension), np.float32))
            found[output] = rows[back]
        else:
            values = [v for p in parts for v in p[1 if output == "sparse" else 2]]
            found[output] = [values[i] for i in back]
    return found


def encode(embedder: Embedder, texts: list[str], outputs: set[str], label: str, cache: Path | None,
           memo: dict | None = None) -> Encoded:
    """The asked-for outputs for texts. Those already computed in this run (`memo`) or cached on disk (per model
    and content) are reused, not computed again."""
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:24]
    memo = {} if memo is None else memo
    found = {output: memo[digest, output] for output in outputs if (digest, output) in memo}
    paths = {}
    if cache is not None:
        for output in outputs - set(found):
            paths[output] = cache / model_key(embedder) / f"{digest}.{output}.npz"
            if paths[output].is_file():
                found[output] = _load(paths[output], output)
    todo = outputs - set(found)
    if todo:
        found.update(_compute(embedder, texts, todo, label))
        for output in todo:
            if output in paths:
                _save(paths[output], output, found[output])
    memo.update({(digest, output): value for output, value in found.items()})
    return Encoded(**found)
