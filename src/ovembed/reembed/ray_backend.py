"""`ovembed reembed --engine ray`: the re-embedding job on Ray Data, for when one machine is not enough.

The driver lists the ids pending in the target space (never their texts), cuts them into ranges of `batch`
chunks and streams them to Ray a window at a time; a pool of actors (ray_worker.EmbedWriter), each holding one
model and one store connection, fetches, embeds and upserts a range at a time. Resuming needs no bookkeeping: a
run only sees chunks that still lack a vector, and upserts are idempotent, so a range done twice (an actor
restarted by Ray, a range retried after a lost connection, two runs at once) costs time, not correctness.
Every node needs ovembed installed, the database reachable and the model: a folder with the same files (found by
fingerprint under the node's OVEMBED_MODELS_DIR, else where the driver has it) or the service reachable. SQLite
works on one machine, its lock queuing the actors' writes."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from ovembed.embedders import embedder_for
from ovembed.errors import ErrorKind, OvembedError
from ovembed.reembed.job import JobStart, ReembedStats, converge, finish_job, start_job
from ovembed.reembed.ray_ranges import IdRange, RangeLedger, missing_ranges, windows
from ovembed.reembed.ray_worker import EmbedWriter
from ovembed.store import Store, open_store

ACTORS_START_S = 600  # for the actors to load their models (and an autoscaling cluster to add their nodes)


@dataclass
class RayReembedStats(ReembedStats):
    nodes: dict[str, int] = field(default_factory=dict)  # ranges embedded per Ray node id


def reembed_ray(db: str, target: str, batch: int = 256, activate: bool = False, actors: int = 2,
                api_key: str | None = None, num_cpus: int | None = None, url: str | None = None,
                space_name: str | None = None, actor_cpus: int | None = None, models_dir: str | None = None,
                progress: bool = True, actors_start_s: float = ACTORS_START_S) -> RayReembedStats:
    """Fill the space of `target` (a model folder or a service URL; with `url`, a model that service serves) in
    the store at `db` on Ray, in the space named `space_name` or the one this model already fills.

    Joins the Ray cluster that is already initialised (or the one RAY_ADDRESS names); otherwise starts a
    local one with `num_cpus` (default: all) and shuts it down at the end. Each actor takes `actor_cpus` CPUs and
    as many OpenVINO threads (default: the cluster's CPUs shared out among the `actors`). A folder is looked for
    on each node by its name under `models_dir` (default: its parent here), or the node's OVEMBED_MODELS_DIR.
    Actors that cannot all start within `actors_start_s` (no room for them on the cluster) fail the job with a
    message that says so; what was written stays, and a later run goes on from it."""
    try:
        import ray
    except ImportError:
        raise OvembedError(ErrorKind.VALIDATION,
                           "the Ray engine needs Ray Data: pip install 'ovembed[ray]'") from None
    if batch < 1 or actors < 1 or (actor_cpus is not None and actor_cpus < 1):
        raise OvembedError(ErrorKind.VALIDATION, "--batch, --actors and --actor-cpus must be at least 1")
    db = _absolute_db(db)
    # Only the model's space is needed here; the model is freed before the actors load their own copies.
    model_space = embedder_for(target, api_key, url).space
    store = open_store(db, create=False)
    run = RayRun(ray, store, batch, actors, actor_cpus, num_cpus, actors_start_s)
    try:
        begin = run.begin = start_job(store, model_space, space_name)
        run.actor_kwargs = {"db": db, "space": begin.space, "api_key": api_key, **_model_source(target, url, models_dir)}
        clock = time.perf_counter()
        with store.reembed_lease(begin.space.name), run.progress_bar(progress), _ray_data_errors_to_its_log():
            converge(store, begin.space.name, run.one_pass, threading.Event())
            # What ingest adds before the switch is embedded inside it, by a model loaded only if needed.
            model = functools.cache(lambda: embedder_for(target, api_key, url))
            activated = finish_job(store, begin.space.name, activate, lambda chunks: model().vectors(chunks))
        return RayReembedStats(begin.space.name, begin.chunks, run.written, run.reused, begin.already,
                               round(time.perf_counter() - clock, 3), activated, run.retries, dict(run.nodes))
    except Exception as exc:
        if _found(exc, lambda e: isinstance(e, ray.exceptions.GetTimeoutError)) is not None:
            raise OvembedError(ErrorKind.UNAVAILABLE, run.start_failure()) from None
        domain = _domain_error(exc, ray.exceptions.RayError)
        if domain is None or domain is exc:
            raise
        raise domain from None  # the actor's traceback is in Ray's logs; the user needs the message
    finally:
        store.close()
        if run.started:
            ray.shutdown()


class RayRun:
    """One reembed_ray call's passes: the windows of ranges sent to the actors, and what came back."""

    def __init__(self, ray, store: Store, batch: int, actors: int, actor_cpus: int | None, num_cpus: int | None,
                 actors_start_s: float = ACTORS_START_S):
        self.ray, self.store, self.batch, self.actors = ray, store, batch, actors
        self.actor_cpus, self.num_cpus, self.actors_start_s = actor_cpus, num_cpus, actors_start_s
        self.begin: JobStart | None = None
        self.actor_kwargs: dict = {}
        self.started = False  # this call started a local Ray (and shuts it down)
        self.written = self.reused = self.retries = 0
        self.nodes: Counter[str] = Counter()
        self.bar = tqdm(disable=True)

    def progress_bar(self, show: bool) -> tqdm:
        begin = self.begin
        self.bar = tqdm(total=begin.chunks, initial=begin.already, unit="chunk", desc=f"reembed {begin.space.name}",
                        disable=not show, smoothing=0.1)
        return self.bar

    def one_pass(self) -> None:
        """Embed what is pending now, a window of ranges at a time."""
        ledger = RangeLedger()
        for window in windows(missing_ranges(self.store, self.begin.space.name, self.batch)):
            ledger.add(window)
            self._join_cluster()
            for result in self._results(window):
                self.finished(result, ledger)

    def finished(self, result: dict, ledger: RangeLedger) -> None:
        """Count a finished range; the checkpoint follows the ranges finished from the pass's first, so it never
        passes one still running (the same checkpoint as the local job's once the pass ends)."""
        self.written += int(result["written"])
        self.reused += int(result["reused"])
        self.retries += int(result["retries"])
        self.nodes[str(result["node"])] += 1
        last = ledger.finish(int(result["seq"]))
        if last is not None:
            self.store.set_checkpoint(self.begin.job, last, self.begin.done_before + self.written)
        self.bar.set_postfix_str(f"ranges {ledger.finished}/{ledger.listed} listed", refresh=False)
        self.bar.update(int(result["written"]))

    def start_failure(self) -> str:
        """Why the actor pool did not start, and what to change: Ray Data gave up waiting for it."""
        nodes = [int(node["Resources"].get("CPU", 0)) for node in self.ray.nodes() if node["Alive"]]
        written = f"{self.written} chunks were embedded and kept" if self.written else "nothing was written"
        return (f"Ray did not start {self.actors} actor(s) of {self.actor_cpus} CPU(s) each within "
                f"{self.actors_start_s:g} s: the cluster's nodes have {nodes} CPUs, or the actors could not load "
                f"their model in that time (see Ray's logs). Lower --actors or --actor-cpus, add nodes, or wait "
                f"longer (--actors-start-timeout); {written}, and a new run goes on from there.")

    def _join_cluster(self) -> None:
        if not self.ray.is_initialized():
            self.ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False,
                          logging_level=logging.WARNING, ignore_reinit_error=True)
            self.started = True
        if self.actor_cpus is None:
            cpus = [node["Resources"].get("CPU", 0.0) for node in self.ray.nodes() if node["Alive"]]
            self.actor_cpus = fitting_cpus(cpus, self.actors)

    def _results(self, window: list[IdRange]):
        """Each range's result as its actor finishes it (in any order): Ray Data streams them."""
        ranges = self.ray.data.from_items([asdict(r) for r in window])
        # Hand the driver the actor's own exception, not Ray Data's UserCodeException, whose cause is
        # lost on its way between processes (set on this dataset's copy of the context only).
        ranges.context.raise_original_map_exception = True
        # Every actor up before the first range goes out: the ranges spread over the nodes instead of going to the
        # first actor ready, and a node that cannot load the model fails the job at once, not at the end.
        ranges.context.wait_for_min_actors_s = self.actors_start_s
        return ranges.map_batches(
            EmbedWriter,
            batch_size=1,  # a range is already one embedder batch; one at a time balances the actors
            compute=self.ray.data.ActorPoolStrategy(size=min(self.actors, len(window))),
            num_cpus=self.actor_cpus,
            fn_constructor_kwargs={**self.actor_kwargs, "threads": self.actor_cpus},
        ).iter_rows()


def fitting_cpus(node_cpus: list[float], actors: int) -> int:
    """The most whole CPUs per actor with which all `actors` still fit on the nodes (each holding as many as its
    CPUs allow); at least 1. The cluster's cores shared out, and no actor left waiting for room."""
    for cpus in range(int(max(node_cpus, default=1)), 1, -1):
        if sum(int(n // cpus) for n in node_cpus) >= actors:
            return cpus
    return 1


def _model_source(target: str, url: str | None, models_dir: str | None) -> dict:
    """How the actors reach the model: a service as given; a folder by its name, under each node's models
    directory (the node's OVEMBED_MODELS_DIR, else `models_dir`, else the folder's parent here)."""
    if target.startswith(("http://", "https://")) or url:
        return {"model": target, "url": url}
    folder = Path(target).expanduser().resolve()
    where = Path(models_dir).expanduser().resolve() if models_dir else folder.parent
    return {"model": folder.name, "models_dir": str(where)}


def _absolute_db(db: str) -> str:
    """Workers may start in another directory than this process: give them an absolute SQLite path."""
    if db.startswith(("postgresql://", "postgres://")):
        return db
    return str(Path(db).expanduser().resolve())


class _HideFromConsole(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.hide = True  # Ray Data's console handler drops such records; its log file keeps them
        return True


@contextmanager
def _ray_data_errors_to_its_log() -> Iterator[None]:
    """Ray Data logs a failed dataset's traceback on the console, then raises. The job reports the error itself (one
    it knows as a message, any other with its traceback), so while it runs that record goes to Ray Data's log file
    only."""
    logger, hide = logging.getLogger("ray.data.exceptions"), _HideFromConsole()
    logger.addFilter(hide)
    try:
        yield
    finally:
        logger.removeFilter(hide)


def _found(exc: BaseException, wanted: Callable[[BaseException], bool]) -> BaseException | None:
    """The first exception in `exc`'s chain (Ray's wrappers keep theirs in `cause`) that is `wanted`."""
    seen: BaseException | None = exc
    for _ in range(10):  # wrappers nest a few deep; a bound rather than trusting every chain to end
        if seen is None or wanted(seen):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    return None


def _domain_error(exc: BaseException, ray_error: type) -> OvembedError | None:
    """The OvembedError an actor raised, found under Ray's wrappers, so the CLI reports it plainly."""
    seen = _found(exc, lambda e: isinstance(e, OvembedError) and not isinstance(e, ray_error))
    if seen is None or seen is exc:
        return seen
    return OvembedError(seen.kind, seen.message)
