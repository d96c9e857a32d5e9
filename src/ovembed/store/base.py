"""The store's contract: documents -> chunks -> vectors per space, exactly one active space.

A *space* is one model's vectors: model id, precision, dimension, outputs and the fingerprint of the model's files,
never where the model was reached (a folder or a service). A space is *filling* (new), *active* (searched; exactly
one) or *retained* (active before: the rollback target). Every chunk insert records, in its own transaction, a
*pending* row for every space; a vector write deletes its pending row in the same transaction. So what a space
lacks is known exactly and in O(1) (the pending rows), whoever wrote the chunk and whenever it committed, and
no search ever counts rows. Activation catches up the pending rows and switches in one transaction that holds
new chunk inserts back; activating the retained space again is the exact rollback. Backends implement this ABC
and pass the same contract tests."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace

import numpy as np

from ovembed.engine.outputs import SparseVector
from ovembed.errors import ErrorKind, OvembedError, validation


@dataclass(frozen=True)
class Space:
    name: str
    model_id: str
    precision: str
    dimension: int
    model_ref: str = ""  # the folder or URL that first made its vectors (a hint for `search`, not its identity)
    sparse: bool = False  # whether lexical weights are stored too
    fingerprint: str = ""  # the model files' checksums (Manifest.fingerprint); "" in stores from before 0.2

    def same_model(self, other: Space) -> bool:
        """Whether `other` makes this space's vectors. A space written before fingerprints were recorded
        matches on model id, precision, dimension and outputs alone."""
        if (self.model_id, self.precision, self.dimension, self.sparse) != \
                (other.model_id, other.precision, other.dimension, other.sparse):
            return False
        return not self.fingerprint or not other.fingerprint or self.fingerprint == other.fingerprint

    def describe(self) -> str:
        return (f"{self.model_id}, {self.precision}, {self.dimension} dims"
                + (f", fingerprint {self.fingerprint}" if self.fingerprint else ""))


FILLING, ACTIVE, RETAINED = "filling", "active", "retained"


@dataclass(frozen=True)
class SpaceStatus:
    space: Space
    active: bool
    vectors: int
    chunks: int
    pending: int = 0  # chunks waiting for a vector in this space (exact: written with the chunks)
    state: str = FILLING
    seeded: bool = True  # the chunks from before the space existed are all vectors or pending rows

    @property
    def complete(self) -> bool:
        return self.seeded and self.pending == 0


@dataclass(frozen=True)
class ChunkInput:
    text: str
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    id: int
    doc_id: str
    seq: int
    text: str
    content_hash: str
    metadata: dict


@dataclass(frozen=True)
class VectorRow:
    chunk_id: int
    dense: np.ndarray
    sparse: SparseVector | None = None


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    score: float


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def store_error(message: str) -> OvembedError:
    return OvembedError(ErrorKind.VALIDATION, message)


class Store(ABC):
    """One database. Methods are transactional on their own; none leaves a half-written state."""

    # --- documents and chunks ----------------------------------------------------------------------
    @abstractmethod
    def upsert_document(self, doc_id: str, chunks: list[ChunkInput], metadata: dict | None = None) -> list[int]:
        """Replace the document's chunks (their vectors go with them); returns the new chunk ids."""

    @abstractmethod
    def delete_document(self, doc_id: str) -> None: ...

    @abstractmethod
    def get_chunks(self, chunk_ids: list[int]) -> list[Chunk]:
        """Chunks in the order of `chunk_ids` (unknown ids are left out)."""

    @abstractmethod
    def chunks_after(self, after_id: int, limit: int, missing_in: str | None = None) -> list[Chunk]:
        """Keyset page of chunks with id > after_id, by id; only those without a vector in `missing_in`."""

    @abstractmethod
    def count_chunks(self) -> int: ...

    @abstractmethod
    def pending_chunks(self, space: str, after_id: int, limit: int) -> list[Chunk]:
        """Keyset page of the chunks waiting for a vector in `space` (pending rows), id > after_id, by id."""

    @abstractmethod
    def pending_ids(self, space: str, after_id: int, limit: int) -> list[int]:
        """Keyset page of the ids (only) of the chunks waiting for a vector in `space`, id > after_id, by id."""

    @abstractmethod
    def has_pending(self, space: str) -> bool:
        """Whether any chunk waits for a vector in `space`: one index probe, never a count."""

    @abstractmethod
    def sweep(self, space: str) -> int:
        """The idempotent repair: a pending row for every chunk with neither a vector nor a pending row in
        `space` (after every ingest transaction in flight has ended), then the space is marked seeded. Returns
        the rows added: 0 unless a chunk was written around the pending rows (by an older ovembed)."""

    @abstractmethod
    def reembed_lease(self, space: str) -> AbstractContextManager:
        """Held by the one reembed job filling `space`, across processes and machines; a second job gets an
        OvembedError of kind BUSY at once. A job killed with -9 releases it (a file lock, a session lock)."""

    # --- spaces ------------------------------------------------------------------------------------
    @abstractmethod
    def create_space(self, space: Space) -> Space:
        """Create a space, or return the existing one of that name when the same model makes it (recording the
        fingerprint of a space from before fingerprints). The first space becomes active."""

    @abstractmethod
    def spaces(self) -> list[SpaceStatus]: ...

    @abstractmethod
    def space_definitions(self) -> list[Space]:
        """Every space's definition, oldest first, without counting anything (cheap)."""

    def resolve_space(self, space: Space, name: str | None = None) -> Space:
        """The space `space`'s model fills: the one named `name` if given (created if new); else an existing
        space of the same model under whatever name (a folder and a service of one model share it); else a
        new one. A name held by another model is refused with what to do instead."""
        if name:
            space = replace(space, name=name)
        else:
            existing = [s for s in self.space_definitions() if s.same_model(space)]
            exact = [s for s in existing if s.fingerprint and s.fingerprint == space.fingerprint]
            if exact or existing:
                space = replace(space, name=(exact or existing)[0].name)
        return self.create_space(space)

    @staticmethod
    def _check_same_model(existing: Space, space: Space) -> None:
        if not existing.same_model(space):
            raise store_error(
                f"space '{space.name}' holds vectors of another model ({existing.describe()}), not of this one "
                f"({space.describe()}); pass --space NEW_NAME to fill a new space with this model, or drop the old "
                f"one first (`ovembed spaces drop {space.name}`) if its vectors are not wanted")

    def space(self, name: str) -> SpaceStatus:
        for status in self.spaces():
            if status.space.name == name:
                return status
        raise OvembedError(ErrorKind.MODEL_NOT_FOUND, f"no space named '{name}'")

    def find_space(self, ref: str) -> Space:
        """A space by its name, or by the names the server accepts for its model: the hub id, its last part
        (`bge-m3`) and `BAAI/bge-m3-base` for `BAAI/bge-m3`. Several spaces of one model need the name."""
        from ovembed.manifest import resolve_alias

        spaces = self.space_definitions()
        named = [s for s in spaces if s.name == ref]
        if named:
            return named[0]
        target, _ = resolve_alias(ref)
        found = [s for s in spaces if target in (s.model_id, s.model_id.rsplit("/", 1)[-1])]
        if len(found) == 1:
            return found[0]
        if found:
            raise validation(f"several spaces hold {target} ({', '.join(s.name for s in found)}): name one")
        known = ", ".join(s.name for s in spaces) or "none"
        raise OvembedError(ErrorKind.MODEL_NOT_FOUND, f"no space named '{ref}' (spaces: {known})")

    def active_space(self) -> Space | None:
        return next((s.space for s in self.spaces() if s.active), None)

    def activate(self, name: str, force: bool = False, compute: Callable[[list[Chunk]], list[VectorRow]] | None = None,
                 max_catch_up: int | None = None) -> None:
        """Make `name` the one active space (the previous one becomes retained). With `compute` (the space's
        model), the chunks still pending are embedded first, and the last few inside the switch's transaction,
        which holds new chunk inserts back: the space is complete at the instant it becomes active. Without it,
        an incomplete space is refused unless forced; so is one with more than `max_catch_up` chunks pending
        (a migration's work belongs to the resumable `reembed`, not to one activation)."""
        status = self.space(name)
        if not force and max_catch_up is not None and status.pending > max_catch_up:
            raise store_error(f"space '{name}' is incomplete: {status.pending} chunks have no vector yet, more than "
                              f"activation catches up ({max_catch_up}); fill it with `ovembed reembed --space {name} "
                              "--to MODEL` (resumable) first, then activate")
        if not status.seeded:
            self.sweep(name)
        if not status.active:
            self.build_index(name)  # outside the switch: it can take minutes and must not hold ingestion
        if compute is not None:
            self.fill_pending(name, compute)  # after the index: what arrives meanwhile is left for the switch
        self._switch(name, force, compute)

    @abstractmethod
    def _switch(self, name: str, force: bool, compute: Callable[[list[Chunk]], list[VectorRow]] | None) -> None:
        """One transaction, exclusive with chunk inserts: embed what is still pending (or refuse, unless forced),
        then the previous active space becomes retained and `name` active."""

    @staticmethod
    def _incomplete(name: str, missing: int) -> OvembedError:
        return store_error(f"space '{name}' is incomplete: {missing} chunks have no vector yet; finish "
                           f"`ovembed reembed` first, or activate with its model (--model/--url) to catch up, "
                           "or use --force")

    @abstractmethod
    def drop_space(self, name: str) -> None:
        """Delete a space and its vectors; the active space cannot be dropped."""

    def build_index(self, space: str) -> None:  # noqa: B027 - a hook: only PostgreSQL defers its index
        """Build the space's search index if the backend defers it (called when a space is complete)."""

    # --- vectors -----------------------------------------------------------------------------------
    @abstractmethod
    def put_vectors(self, space: str, rows: list[VectorRow]) -> int:
        """Upsert vectors; rows for chunks that no longer exist are skipped. Returns rows written."""

    @abstractmethod
    def count_vectors(self, space: str) -> int: ...

    @abstractmethod
    def get_dense(self, space: str, chunk_ids: list[int]) -> dict[int, np.ndarray]: ...

    @abstractmethod
    def search_dense(self, space: str, query: np.ndarray, k: int) -> list[Hit]:
        """Nearest chunks by cosine similarity (vectors are stored L2-normalised)."""

    @abstractmethod
    def search_sparse(self, space: str, query: SparseVector, k: int) -> list[Hit]:
        """Chunks by lexical score (sum of weight products over shared token ids)."""

    @abstractmethod
    def space_lock(self, space: str) -> AbstractContextManager:
        """An exclusive lock on one space across processes, held while missing vectors are computed,
        so concurrent lazy readers embed a chunk once instead of racing to write it."""

    def fill_missing(self, space: str, compute: Callable[[list[Chunk]], list[VectorRow]],
                     chunk_ids: list[int] | None = None, limit: int = 256) -> int:
        """Embed and write chunks that have no vector in `space` (the given ids, or the first `limit` pending).
        Returns how many were written; a concurrent caller waits, then finds nothing left to do."""
        with self.space_lock(space):
            if chunk_ids is None:
                missing = self.pending_chunks(space, 0, limit)
            else:
                present = self.get_dense(space, chunk_ids)
                missing = self.get_chunks([i for i in dict.fromkeys(chunk_ids) if i not in present])
            return self.put_vectors(space, compute(missing)) if missing else 0

    def fill_pending(self, space: str, compute: Callable[[list[Chunk]], list[VectorRow]], page: int = 256) -> int:
        """Embed every chunk pending in `space`, a page at a time (the lazy path and activation's catch-up)."""
        written = 0
        while True:
            n = self.fill_missing(space, compute, limit=page)
            written += n
            if n == 0 and not self.has_pending(space):  # 0 written can also mean the page's chunks were deleted
                return written

    def iter_missing(self, space: str, page: int, after_id: int = 0) -> Iterator[list[Chunk]]:
        """Keyset pages of the chunks pending in `space`, from after_id up."""
        while chunks := self.pending_chunks(space, after_id, page):
            yield chunks
            after_id = chunks[-1].id

    # --- job checkpoints -----------------------------------------------------------------------------
    @abstractmethod
    def get_checkpoint(self, job: str) -> tuple[int, int]:
        """(last chunk id done, rows done) of a job; (0, 0) when it has not started."""

    @abstractmethod
    def set_checkpoint(self, job: str, last_id: int, done: int) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- shared checks -----------------------------------------------------------------------------
    @staticmethod
    def _check_rows(space: Space, rows: list[VectorRow]) -> None:
        for row in rows:
            if row.dense.shape != (space.dimension,):
                raise store_error(f"space '{space.name}' holds {space.dimension}-dim vectors, "
                                  f"got shape {row.dense.shape} for chunk {row.chunk_id}")
            if not np.isfinite(row.dense).all():
                raise store_error(f"vector for chunk {row.chunk_id} has NaN or infinite values")
