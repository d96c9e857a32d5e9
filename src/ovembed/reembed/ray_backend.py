"""`ovembed reembed --engine ray`: the re-embedding job on Ray Data, for when one machine is not enough.

The driver cuts the chunks missing in the target space into id ranges of `batch` chunks; a pool of actors,
each holding one model (or one client of a service) and one store connection, embeds and upserts a range at
a time. Resuming needs no bookkeeping: a run only sees chunks that still lack a vector, and upserts are
idempotent, so a range done twice (an actor restarted by Ray, two runs at once) costs time, not correctness.
Every node needs ovembed installed, the model folder at the same path (or the service reachable) and the
database reachable; SQLite works on one machine, its lock queuing the actors' writes."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ovembed.embedders import embedder_for
from ovembed.errors import ErrorKind, OvembedError
from ovembed.reembed.job import ReembedStats, _TextCache, converge, embed_page, finish_job, start_job
from ovembed.store import Space, Store, open_store

SCAN_PAGE = 4096  # chunks per query while the driver lists the missing ids


class EmbedWriter:
    """One Ray actor: embeds the missing chunks of id ranges and writes their vectors."""

    def __init__(self, db: str, target: str, api_key: str | None, space: Space, url: str | None = None):
        self.space = space.name
        self.cache = _TextCache()
        self.store = None
        # Ray reports an error raised here to the driver as text only (ActorDiedError keeps no cause), so it
        # is kept and raised by the first call instead, where the driver receives the error itself.
        self.failed: OvembedError | None = None
        try:
            self.store = open_store(db)
            self.embedder = embedder_for(target, api_key, url)
            if not self.embedder.space.same_model(space):
                # A service that switched models mid-job would otherwise mix two models' vectors in one space.
                raise OvembedError(ErrorKind.VALIDATION, f"this worker's model makes space {self.embedder.space}, "
                                                         f"but the job fills {space}")
        except OvembedError as exc:
            self.failed = exc

    def __call__(self, ranges: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        written, reused = [], []
        if self.failed is not None:
            raise self.failed
        for lo, hi, n in zip(ranges["lo"], ranges["hi"], ranges["n"], strict=True):
            # At most n chunks of the range are missing: any past hi are another range's to do.
            chunks = [c for c in self.store.pending_chunks(self.space, int(lo) - 1, int(n)) if c.id <= hi]
            rows, page_reused = embed_page(self.embedder, chunks, self.cache) if chunks else ([], 0)
            written.append(self.store.put_vectors(self.space, rows) if rows else 0)
            reused.append(page_reused)
        return {"written": np.asarray(written, np.int64), "reused": np.asarray(reused, np.int64)}

    def __del__(self):
        store = getattr(self, "store", None)
        if store is not None:
            store.close()


def missing_ranges(store: Store, space: str, batch: int) -> Iterator[dict[str, int]]:
    """Id ranges [lo, hi] holding `n` = `batch` chunks without a vector in `space` (the last range fewer).

    Cut by missing chunks, not by fixed id width: every range is one embedder batch of work however sparse
    the ids are (deleted and re-ingested documents leave gaps), and a resumed run lists only what is left."""
    ids: list[int] = []
    after = 0
    while page := store.pending_chunks(space, after, max(SCAN_PAGE, batch)):
        ids.extend(c.id for c in page)
        after = page[-1].id
        while len(ids) >= batch:
            yield {"lo": ids[0], "hi": ids[batch - 1], "n": batch}
            del ids[:batch]
    if ids:
        yield {"lo": ids[0], "hi": ids[-1], "n": len(ids)}


def reembed_ray(db: str, target: str, batch: int = 256, activate: bool = False, actors: int = 2,
                api_key: str | None = None, num_cpus: int | None = None, url: str | None = None,
                space_name: str | None = None) -> ReembedStats:
    """Fill the space of `target` (a model folder or a service URL; with `url`, a model that service serves) in
    the store at `db` on Ray, in the space named `space_name` or the one this model already fills.

    Joins the Ray cluster that is already initialised (or the one RAY_ADDRESS names); otherwise starts a
    local one with `num_cpus` (default: all) and shuts it down at the end."""
    try:
        import ray
    except ImportError:
        raise OvembedError(ErrorKind.VALIDATION,
                           "the Ray engine needs Ray Data: pip install 'ovembed[ray]'") from None
    if batch < 1 or actors < 1:
        raise OvembedError(ErrorKind.VALIDATION, "--batch and --actors must be at least 1")
    db, target = _absolute(db, target, url)
    # Only the model's space is needed here; the model is freed before the actors load their own copies.
    model_space = embedder_for(target, api_key, url).space
    store = open_store(db, create=False)
    started = False
    try:
        begin = start_job(store, model_space, space_name)
        space = begin.space
        clock = time.perf_counter()
        totals = {"written": 0, "reused": 0}

        def one_pass() -> None:
            nonlocal started
            ranges = list(missing_ranges(store, space.name, batch))
            if not ranges:
                return
            if not ray.is_initialized():
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING, ignore_reinit_error=True)
                started = True
            for key, value in _run_ranges(ray, ranges, actors, {"db": db, "target": target, "api_key": api_key,
                                                                 "space": space, "url": url}).items():
                totals[key] += value
            # The same checkpoint as the local job: everything up to the last range is done.
            store.set_checkpoint(begin.job, max(begin.after_id, ranges[-1]["hi"]), begin.done_before + totals["written"])

        with store.reembed_lease(space.name):
            converge(store, space.name, one_pass, threading.Event())
            # What ingest adds before the switch is embedded inside it, by a model loaded only if needed.
            model = functools.cache(lambda: embedder_for(target, api_key, url))
            activated = finish_job(store, space.name, activate, lambda chunks: model().vectors(chunks))
        return ReembedStats(space.name, begin.chunks, totals["written"], totals["reused"], begin.already,
                            round(time.perf_counter() - clock, 3), activated)
    except Exception as exc:
        domain = _domain_error(exc, ray.exceptions.RayError)
        if domain is None or domain is exc:
            raise
        raise domain from None  # the actor's traceback is in Ray's logs; the user needs the message
    finally:
        store.close()
        if started:
            ray.shutdown()


def _run_ranges(ray, ranges: list[dict], actors: int, actor_kwargs: dict) -> dict[str, int]:
    """Embed and write the ranges on a pool of EmbedWriter actors; returns the vectors written and reused."""
    ranges_ds = ray.data.from_items(ranges)
    # Hand the driver the actor's own exception, not Ray Data's UserCodeException, whose cause is
    # lost on its way between processes (set on this dataset's copy of the context only).
    ranges_ds.context.raise_original_map_exception = True
    counts = ranges_ds.map_batches(
        EmbedWriter,
        batch_size=1,  # a range is already one embedder batch; one at a time balances the actors
        compute=ray.data.ActorPoolStrategy(size=min(actors, len(ranges))),
        fn_constructor_kwargs=actor_kwargs,
    ).take_all()
    return {"written": sum(int(row["written"]) for row in counts), "reused": sum(int(row["reused"]) for row in counts)}


def _absolute(db: str, target: str, url: str | None) -> tuple[str, str]:
    """Workers may start in another directory than this process: give them absolute paths."""
    if not target.startswith(("http://", "https://")) and not url:
        target = str(Path(target).expanduser().resolve())
    if not db.startswith(("postgresql://", "postgres://")):
        db = str(Path(db).expanduser().resolve())
    return db, target


def _domain_error(exc: BaseException, ray_error: type) -> OvembedError | None:
    """The OvembedError an actor raised, found under Ray's wrappers, so the CLI reports it plainly."""
    seen: BaseException | None = exc
    for _ in range(10):  # wrappers nest a few deep; a bound rather than trusting every chain to end
        if seen is None:
            return None
        if isinstance(seen, OvembedError) and not isinstance(seen, ray_error):
            return seen if seen is exc else OvembedError(seen.kind, seen.message)
        seen = getattr(seen, "cause", None) or seen.__cause__
    return None
