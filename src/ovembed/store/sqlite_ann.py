"""SQLite's dense search for one space in one process: an HNSW index file (usearch) per space beside the
database, memory-mapped (so every process shares one copy in the page cache), plus the vectors written since
it was built, searched exactly in memory; candidates are re-scored exactly from the stored float32 vectors.

A space below `ann_min_vectors` vectors has no index file: all its vectors are the in-memory part, searched
exactly. Writes are read incrementally by `seq` (the vectors table's write order), per space: a write to another
space costs nothing here. Past `ann_delta_max` vectors in memory (or `ann_min_vectors` without a file) the index
is rebuilt in a background thread by whichever process notices first (a file lock), and every process maps the
new file at its next search."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np

from ovembed.config import StoreSettings

log = logging.getLogger("ovembed.store")
BUILD_PAGE = 8192  # vectors per read while an index is built
RESCAN_S = 1.0  # how often a process looks for a newer index file


def space_key(name: str, created_at: float) -> str:
    """A space's index files' name: a space dropped and made again under its name is another index."""
    return hashlib.sha256(f"{name}\0{created_at!r}".encode()).hexdigest()[:16]


def index_folder(db_path: Path) -> Path:
    return db_path.with_name(f"{db_path.name}.ann")


class DenseIndex:
    """One space's vectors as this process searches them. Every method runs under the store's lock."""

    def __init__(self, db_path: Path, key: str, space: str, dim: int, settings: StoreSettings):
        self.db_path, self.key, self.space, self.dim, self.settings = db_path, key, space, dim, settings
        self.folder = index_folder(db_path)
        self.base = None  # the mapped usearch index, or None
        self.base_seq = 0  # vectors with seq <= base_seq are in the file
        self.loaded_seq = 0  # vectors with seq <= loaded_seq are in the file or in memory
        self.deletes = -1  # the space's delete count when memory was last loaded in full
        self.version = None  # (data_version, own writes) when last refreshed
        self._ids = np.zeros(0, np.int64)  # in memory: chunk ids, their rows, their seqs
        self._rows = np.zeros((0, dim), np.float32)
        self._seqs = np.zeros(0, np.int64)
        self._count = 0
        self._where: dict[int, int] = {}
        self._scanned = 0.0
        self._building: threading.Thread | None = None

    # --- keeping up with the database ----------------------------------------------------------------
    def refresh(self, db: sqlite3.Connection, version: tuple[int, int]) -> None:
        self._map_newest()
        if version == self.version:
            return  # nothing was written anywhere since the last look
        self.version = version
        top, deletes = db.execute(
            "SELECT (SELECT max(seq) FROM vectors WHERE space = ?), (SELECT deletes FROM spaces WHERE name = ?)",
            (self.space, self.space)).fetchone()
        if self.base is None and deletes != self.deletes:
            self._reset(0)  # exact search must not return a deleted vector: read the (small) space again
        self.deletes = deletes
        if top is not None and top > self.loaded_seq:
            self._load(db, self.loaded_seq)
        self._maybe_rebuild()

    def _reset(self, base_seq: int) -> None:
        self.base_seq = self.loaded_seq = base_seq
        self._ids, self._rows, self._seqs = (np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32),
                                             np.zeros(0, np.int64))
        self._count, self._where = 0, {}

    def _load(self, db: sqlite3.Connection, after: int) -> None:
        for seq, chunk_id, blob in db.execute("SELECT seq, chunk_id, dense FROM vectors WHERE space = ? AND seq > ? "
                                              "ORDER BY seq", (self.space, after)):
            at = self._where.get(chunk_id)
            if at is None:  # a new chunk; else a newer vector of one already in memory
                at = self._where[chunk_id] = self._grow()
            self._ids[at], self._seqs[at] = chunk_id, seq
            self._rows[at] = np.frombuffer(blob, "<f4")
            self.loaded_seq = seq

    def _grow(self) -> int:
        if self._count == len(self._ids):
            size = max(1024, 2 * self._count)
            self._ids, self._seqs = np.resize(self._ids, size), np.resize(self._seqs, size)
            rows = np.empty((size, self.dim), np.float32)
            rows[: self._count] = self._rows[: self._count]
            self._rows = rows
        self._count += 1
        return self._count - 1

    def _map_newest(self) -> None:
        """Map the newest index file of the space if another process (or thread) built one since."""
        now = time.monotonic()
        if now - self._scanned < RESCAN_S and (self._building is None or self._building.is_alive()):
            return
        self._scanned, self._building = now, None
        newest = newest_file(self.folder, self.key)
        if newest is None or newest[0] <= self.base_seq:
            return
        from usearch.index import Index

        seq, path = newest
        self.base = Index.restore(str(path), view=True)
        self.base.expansion_search = self.settings.ann_expansion_search  # not kept in the file
        keep = self._seqs[: self._count] > seq  # what the file lacks stays in memory
        ids, rows, seqs = self._ids[: self._count][keep], self._rows[: self._count][keep], self._seqs[: self._count][keep]
        loaded = self.loaded_seq
        self._reset(seq)
        self.loaded_seq = max(loaded, seq)
        for chunk_id, row, s in zip(ids.tolist(), rows, seqs.tolist(), strict=True):
            at = self._where[chunk_id] = self._grow()
            self._ids[at], self._rows[at], self._seqs[at] = chunk_id, row, s

    def _maybe_rebuild(self) -> None:
        limit = self.settings.ann_delta_max if self.base is not None else self.settings.ann_min_vectors
        if self.settings.ann == "exact" or self._count <= limit or self._building is not None:
            return
        self._building = threading.Thread(target=self.build, kwargs={"wait": False}, daemon=True,
                                          name=f"ann-build-{self.space}")
        self._building.start()

    # --- search --------------------------------------------------------------------------------------
    def candidates(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(chunk ids, their exact scores) when memory holds every vector (no index file), else (candidate ids,
        None): the caller re-scores them from the stored vectors, which also drops deleted chunks."""
        ids, rows = self._ids[: self._count], self._rows[: self._count]
        if self.base is None:
            scores = rows @ query
            top = _best(scores, k)
            return ids[top], scores[top]
        wanted = k * self.settings.ann_candidates
        found = self.base.search(query, wanted, exact=False)
        keys = np.asarray(found.keys, np.int64)
        if len(ids):
            keys = np.concatenate([keys, ids[_best(rows @ query, wanted)]])
        return np.unique(keys), None

    @property
    def in_memory(self) -> int:
        return self._count

    # --- building ------------------------------------------------------------------------------------
    def build(self, wait: bool = True) -> Path | None:
        """Write an index file of every vector of the space (from a connection of its own: a snapshot, while
        others write). One builder per space across processes: `wait` waits for another's, else returns None."""
        from usearch.index import Index

        self.folder.mkdir(exist_ok=True)
        with open(self.folder / f"{self.key}.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                return None
            db = sqlite3.connect(self.db_path, timeout=30)
            try:
                db.execute("BEGIN")  # one snapshot: seq and rows agree
                top = db.execute("SELECT max(seq) FROM vectors WHERE space = ?", (self.space,)).fetchone()[0] or 0
                newest = newest_file(self.folder, self.key)
                if newest is not None and newest[0] >= top:
                    return newest[1]
                started = time.perf_counter()
                index = Index(ndim=self.dim, metric="cos", dtype=self.settings.ann_dtype,
                              connectivity=self.settings.ann_connectivity,
                              expansion_add=self.settings.ann_expansion_add,
                              expansion_search=self.settings.ann_expansion_search)
                rows = db.execute("SELECT chunk_id, dense FROM vectors WHERE space = ? AND seq <= ? ORDER BY seq",
                                  (self.space, top))
                while page := rows.fetchmany(BUILD_PAGE):
                    index.add(np.fromiter((r[0] for r in page), np.int64, len(page)),
                              np.frombuffer(b"".join(r[1] for r in page), "<f4").reshape(len(page), self.dim))
                path = self.folder / f"{self.key}.{top}.usearch"
                index.save(str(path.with_suffix(".tmp")))
                os.replace(path.with_suffix(".tmp"), path)  # readers see a whole file or none
            finally:
                db.close()
            for seq, old in list_files(self.folder, self.key):
                if seq < top:
                    old.unlink(missing_ok=True)  # a process still mapping it keeps reading it until it remaps
            log.info("space %s: index of %d vectors built in %.1f s (%s)", self.space, len(index),
                     time.perf_counter() - started, path)
            return path


def _best(scores: np.ndarray, n: int) -> np.ndarray:
    """Positions of the n largest scores (all of them when there are fewer), in no order."""
    return np.argpartition(-scores, n - 1)[:n] if len(scores) > n else np.arange(len(scores))


def list_files(folder: Path, key: str) -> list[tuple[int, Path]]:
    found = []
    for path in folder.glob(f"{key}.*.usearch") if folder.is_dir() else []:
        seq = path.name[len(key) + 1: -len(".usearch")]
        if seq.isdigit():
            found.append((int(seq), path))
    return sorted(found)


def newest_file(folder: Path, key: str) -> tuple[int, Path] | None:
    files = list_files(folder, key)
    return files[-1] if files else None


def remove_files(db_path: Path, key: str) -> None:
    folder = index_folder(db_path)
    for _, path in list_files(folder, key):
        path.unlink(missing_ok=True)
    (folder / f"{key}.lock").unlink(missing_ok=True)
