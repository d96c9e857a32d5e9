"""`ovembed bench mixed`: how much a user's short query suffers while bulk documents saturate the service, and how
much the documents suffer from the queries, measured in one run and given as ratios.

After a warm-up, three phases of equal length: queries alone, documents alone, both at once. Query clients are
open-loop: one short text per request every interval, scheduled by the clock (a late reply is followed at once by
the next query, never by a burst of catch-up ones). Document clients are closed-loop: batches of long texts back to
back on keep-alive connections. Every text is unique (its request number leads it), so no cache can help. Both go
to /v1/embeddings; a 503 with Retry-After is waited out and sent again, as the soak does, and counted apart from
errors. The document clients run in a child process (`common.run_child`), so that their Python work (building
long texts, parsing large answers) never holds the interpreter lock the query clients need to time their replies."""

from __future__ import annotations

import http.client
import itertools
import json
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ovembed.bench.common import (
    LocalServer,
    percentiles_ms,
    proc_status,
    run_child,
    start_model_server,
)
from ovembed.bench.mix import Sizer, measure_sizer
from ovembed.bench.mixed_report import mixed_report
from ovembed.bench.watch import health_state, sample_server
from ovembed.client import Client
from ovembed.errors import ErrorKind, OvembedError, validation

ROUTE = "/v1/embeddings"
HEADERS = {"Content-Type": "application/json"}
LOAD_TIMEOUT_S = 300.0
# Request numbers of each phase's document texts start apart, so no text repeats across phases; queries count
# from 0. All stay below 10**9, the longest number the Sizer's number cost is measured on.
FIRST_DOCUMENT_ID = {"warm-up": 300_000_000, "documents_alone": 500_000_000, "both": 700_000_000}
PHASES = {"queries_alone": "queries alone", "documents_alone": "documents alone", "both": "both at once"}


@dataclass
class MixedOptions:
    url: str | None = None
    model: Path | None = None  # a model folder: start `ovembed serve` for it and sample its RSS
    served_model: str | None = None  # the `model` field of each request; None: the service's default
    server_env: dict[str, str] = field(default_factory=dict)  # --model only: settings for the server
    log: Path | None = None  # --model only: the server's log (default: a temporary file)
    seconds: float = 20.0  # per phase
    warmup: float = 3.0
    query_clients: int = 1
    query_tokens: int = 16
    query_interval_ms: float = 50.0  # per client; 0: back to back
    doc_clients: int = 3
    doc_batch: int = 32
    doc_tokens: list[int] = field(default_factory=lambda: [250])  # a request's texts cycle through these lengths
    max_query_p99_ms: float | None = None
    max_query_p99_ratio: float | None = None  # p99 under load ÷ p50 alone
    min_doc_share: float | None = 0.75  # document tokens/s under queries ÷ alone
    timeout: float = 600.0  # seconds per request


@dataclass
class QueryLoad:
    """The query clients: open loop, one text per request every `interval_ms` per client."""

    url: str
    served_model: str
    clients: int
    tokens: int
    interval_ms: float
    timeout: float


@dataclass
class DocumentLoad:
    """One phase's document clients: closed loop, `batch` texts per request; all the child process needs, as JSON."""

    url: str
    served_model: str
    clients: int
    batch: int
    lengths: list[int]
    seconds: float
    first_id: int
    timeout: float
    word_tokens: list[int]  # the Sizer's measured costs
    number_tokens: int


@dataclass
class Tally:
    """What the clients saw; lists are appended from many threads (list.append is atomic)."""

    queries: list[tuple[float, float, int]] = field(default_factory=list)  # sent at (monotonic s), ms, tokens
    documents: list[tuple[float, int, int]] = field(default_factory=list)  # answered at (monotonic s), texts, tokens
    backpressure: list[float] = field(default_factory=list)  # Retry-After seconds of each 503
    errors: list[str] = field(default_factory=list)


# --- the clients ------------------------------------------------------------------------------------


def _connect(url: str, timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return kind(parts.hostname, parts.port, timeout=timeout)


def _post(conn: http.client.HTTPConnection, texts: list[str], model: str, tally: Tally,
          stop: threading.Event) -> int | None:
    """Embed `texts` on /v1/embeddings; their prompt tokens, or None after an error (recorded) or when the run
    ended during a 503's Retry-After (not an error: the service asked to wait, and the run is over)."""
    body = json.dumps({"input": texts, "model": model}).encode()
    while True:
        try:
            conn.request("POST", ROUTE, body, HEADERS)
            response = conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            tally.errors.append(f"{type(exc).__name__}: {exc}")
            conn.close()  # http.client reconnects on the next request
            return None
        if response.status == 200:
            try:
                data = json.loads(payload)
                vectors, tokens = len(data["data"]), int(data["usage"]["prompt_tokens"])
            except (ValueError, KeyError, TypeError):
                tally.errors.append("200 but the body is not an embeddings response")
                return None
            if vectors != len(texts):
                tally.errors.append(f"200 but {vectors} vectors for {len(texts)} texts")
                return None
            return tokens
        retry_after = response.getheader("Retry-After")
        if response.status == 503 and retry_after is not None:
            try:
                wait = float(retry_after)
            except ValueError:
                tally.errors.append(f"503 with a bad Retry-After {retry_after!r}")
                return None
            tally.backpressure.append(wait)
            # At least Retry-After, plus jitter so that clients do not come back in lockstep.
            if stop.wait(wait * (1 + 0.5 * random.random())):
                return None
            continue
        tally.errors.append(f"HTTP {response.status}: {payload[:200]!r}")
        return None


def _query_client(k: int, load: QueryLoad, sizer: Sizer, ids: itertools.count, tally: Tally, start_at: float,
                  stop: threading.Event) -> None:
    conn = _connect(load.url, load.timeout)
    interval = load.interval_ms / 1000
    due = start_at + interval * k / load.clients  # clients staggered over one interval
    while not stop.wait(max(0.0, due - time.monotonic())):
        text = sizer.text(next(ids), load.tokens)
        sent, t0 = time.monotonic(), time.perf_counter()
        tokens = _post(conn, [text], load.served_model, tally, stop)
        if tokens is not None:
            tally.queries.append((sent, (time.perf_counter() - t0) * 1000, tokens))
        due = max(due + interval, time.monotonic())  # late: the next one now, and no catching up
    conn.close()


def _document_client(k: int, load: DocumentLoad, sizer: Sizer, tally: Tally, start_line: threading.Barrier,
                     stop: threading.Event) -> None:
    conn = _connect(load.url, load.timeout)
    start_line.wait()
    for n in itertools.count():
        if stop.is_set():
            break
        first = load.first_id + (k + n * load.clients) * load.batch
        texts = [sizer.text(first + j, load.lengths[j % len(load.lengths)]) for j in range(load.batch)]
        tokens = _post(conn, texts, load.served_model, tally, stop)
        if tokens is not None:
            tally.documents.append((time.monotonic(), len(texts), tokens))
    conn.close()


def _run_documents(load: DocumentLoad, tally: Tally) -> tuple[float, float]:
    """The document clients for `load.seconds` (each finishes the request it has in flight); (start, end)."""
    sizer = Sizer(tuple(load.word_tokens), load.number_tokens)
    stop, start_line = threading.Event(), threading.Barrier(load.clients + 1)
    threads = [threading.Thread(target=_document_client, args=(k, load, sizer, tally, start_line, stop), daemon=True)
               for k in range(load.clients)]
    for thread in threads:
        thread.start()
    start_line.wait()
    started = time.monotonic()
    time.sleep(load.seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return started, time.monotonic()


def document_worker(plan: dict) -> dict:
    """One phase's document clients in the child process (`common.run_child`). Its times are CLOCK_MONOTONIC,
    which on Linux is one clock for every process, so the parent can place its queries against them."""
    tally = Tally()
    started, ended = _run_documents(DocumentLoad(**plan), tally)
    return {"started": started, "ended": ended, "documents": tally.documents, "backpressure": tally.backpressure,
            "errors": tally.errors}


# --- the run ----------------------------------------------------------------------------------------


def _start_server(opts: MixedOptions, say) -> LocalServer:
    return start_model_server(opts.model, {"OVEMBED_LOG_LEVEL": "warning", **opts.server_env}, opts.log, "mixed",
                              LOAD_TIMEOUT_S, say)


def _calibrate(url: str, opts: MixedOptions) -> tuple[Sizer, str, int]:
    """The filler words' token costs from the service's /tokenize, the served model's id and its max length."""
    with Client(url, timeout=opts.timeout, retries=0) as ask:
        sizer, data = measure_sizer(ask, url, opts.served_model, "benchmark")
    if not data.get("max_length"):
        raise validation(f"{url}/tokenize gave no max length: the benchmark needs it to size its texts")
    return sizer, data["model"], int(data["max_length"])


def _fit_lengths(opts: MixedOptions, max_length: int, say) -> tuple[int, list[int]]:
    """Query and document lengths cut to the model's max length (the service would truncate them anyway)."""
    longer = sorted({n for n in [opts.query_tokens, *opts.doc_tokens] if n > max_length})
    if longer:
        say(f"{', '.join(map(str, longer))} tokens is above the model's max length {max_length}: using {max_length}")
    return min(opts.query_tokens, max_length), [min(n, max_length) for n in opts.doc_tokens]


class _Run:
    """One service, its texts and its clients: the warm-up, and each phase with its row."""

    def __init__(self, control: Client, pid: int | None, opts: MixedOptions, sizer: Sizer, queries: QueryLoad,
                 doc_lengths: list[int]):
        self.control, self.pid, self.opts, self.sizer, self.queries = control, pid, opts, sizer, queries
        self.doc_lengths = doc_lengths
        self.query_ids = itertools.count()

    def _documents(self, phase: str, seconds: float) -> DocumentLoad:
        return DocumentLoad(self.queries.url, self.queries.served_model, self.opts.doc_clients, self.opts.doc_batch,
                            self.doc_lengths, seconds, FIRST_DOCUMENT_ID[phase], self.opts.timeout,
                            list(self.sizer.word_tokens), self.sizer.number_tokens)

    def _start_queries(self, tally: Tally, stop: threading.Event) -> tuple[list[threading.Thread], float]:
        start_at = time.monotonic() + 0.05
        threads = [threading.Thread(target=_query_client, daemon=True,
                                    args=(k, self.queries, self.sizer, self.query_ids, tally, start_at, stop))
                   for k in range(self.queries.clients)]
        for thread in threads:
            thread.start()
        return threads, start_at

    def warm_up(self, seconds: float) -> Tally:
        """Both kinds of client at once, in this process, untimed: the service meets the shapes it will see (the
        longest documents, queries merged into document batches) before the phases."""
        tally, stop = Tally(), threading.Event()
        threads, _ = self._start_queries(tally, stop)
        _run_documents(self._documents("warm-up", seconds), tally)
        stop.set()
        for thread in threads:
            thread.join()
        return tally

    def phase(self, name: str, queries: bool, documents: bool) -> dict:
        """One phase's row; with the server's pid, its RSS sampled every second meanwhile."""
        tally, samples, sampling = Tally(), [], threading.Event()
        sampler = threading.Thread(target=sample_server, daemon=True,
                                   args=(self.control, self.pid, sampling, time.monotonic(), samples))
        if self.pid is not None:
            sampler.start()
        try:
            window = self._drive(name, queries, documents, tally)
        finally:
            sampling.set()
            if sampler.is_alive():
                sampler.join()
        return _row(name, tally, window, samples)

    def _drive(self, name: str, queries: bool, documents: bool, tally: Tally) -> tuple[float, float]:
        """The phase's window. With documents it is the child's, from its first request to its last answer; the
        query clients run from before it opens (the child takes a second to start) to after it closes, and only
        the queries sent inside it count (`_row`)."""
        stop = threading.Event()
        threads, start_at = self._start_queries(tally, stop) if queries else ([], time.monotonic())
        try:
            if not documents:
                time.sleep(max(0.0, start_at + self.opts.seconds - time.monotonic()))
                return start_at, start_at + self.opts.seconds
            figures = run_child("ovembed.bench.mixed:document_worker", asdict(self._documents(name, self.opts.seconds)))
            if "error" in figures:
                raise OvembedError(ErrorKind.UNAVAILABLE, f"the document clients failed: {figures['error']}")
            tally.documents.extend(tuple(d) for d in figures["documents"])
            tally.backpressure.extend(figures["backpressure"])
            tally.errors.extend(figures["errors"])
            return figures["started"], figures["ended"]
        finally:
            stop.set()
            for thread in threads:
                thread.join()


def run_mixed(opts: MixedOptions, progress=None) -> dict:
    """Warm up, run the three phases, and compare them; the report has every figure, the ratios and the targets."""
    say = progress or (lambda message: None)
    server = _start_server(opts, say) if opts.model is not None else None
    url, pid = (server.url, server.proc.pid) if server else (opts.url.rstrip("/"), None)
    try:
        with Client(url, timeout=5.0, retries=0) as control:
            state = health_state(control) if server is None else "ok"
            if state != "ok":
                raise validation(f"{url}/health is not 200 ({state}): is `ovembed serve` running and ready there?")
            sizer, model, max_length = _calibrate(url, opts)
            query_tokens, doc_lengths = _fit_lengths(opts, max_length, say)
            queries = QueryLoad(url, model, opts.query_clients, query_tokens, opts.query_interval_ms, opts.timeout)
            run = _Run(control, pid, opts, sizer, queries, doc_lengths)
            if opts.warmup > 0:
                say(f"warm-up: queries and documents together for {opts.warmup:g} s")
                warm = run.warm_up(opts.warmup)
                if warm.errors:
                    raise OvembedError(ErrorKind.UNAVAILABLE, f"the warm-up failed: {warm.errors[0]}")
            rows = {}
            for name, (with_queries, with_documents) in {"queries_alone": (True, False),
                                                         "documents_alone": (False, True), "both": (True, True)}.items():
                say(f"{PHASES[name]}: {opts.seconds:g} s")
                rows[name] = run.phase(name, with_queries, with_documents)
        peak = proc_status(pid).get("VmHWM") if pid else None
    finally:
        if server is not None:
            server.stop(60)
    return mixed_report(opts, url, model, max_length, query_tokens, doc_lengths, rows, peak)


# --- the report -------------------------------------------------------------------------------------


def _row(name: str, tally: Tally, window: tuple[float, float], samples: list[dict]) -> dict:
    start, end = window
    queries = [q for q in tally.queries if start <= q[0] < end]
    times = [q[1] for q in queries]
    texts, tokens = sum(d[1] for d in tally.documents), sum(d[2] for d in tally.documents)
    rss = [s["rss_mb"] for s in samples if s.get("rss_mb") is not None]
    return {
        "phase": PHASES[name], "window_s": round(end - start, 2),
        "queries": len(queries), **{f"query_{k}": v for k, v in percentiles_ms(times).items()},
        "query_max_ms": round(max(times), 2) if times else None,
        "query_mean_tokens": round(sum(q[2] for q in queries) / len(queries), 1) if queries else None,
        "doc_requests": len(tally.documents), "doc_texts": texts, "doc_tokens": tokens,
        "doc_tokens_per_s": round(tokens / (end - start), 1) if tally.documents else None,
        "errors": len(tally.errors), "backpressure_503": len(tally.backpressure),
        "server_rss_max_mb": round(max(rss), 1) if rss else None, "first_errors": tally.errors[:3],
    }
