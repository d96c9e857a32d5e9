"""`ovembed bench …`: the measuring tools (engine, http, mixed, soak, memory, store). Each command checks its options,
calls a `run_…` of `ovembed.bench`, prints the report for people and writes it as JSON for machines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import click
import psutil

from ovembed.bench.common import progress, write_json
from ovembed.bench.engine import DEFAULT_BACKENDS, EngineOptions, engine_text, run_engine
from ovembed.bench.http import HttpOptions, http_text, run_http
from ovembed.bench.memory import memory_table, run_memory
from ovembed.bench.mixed import MixedOptions, run_mixed
from ovembed.bench.mixed_report import mixed_text
from ovembed.bench.peers import LABELS
from ovembed.bench.soak import LOOPBACK, ROUTES, SoakOptions, run_soak, soak_table
from ovembed.bench.store import BACKENDS as STORE_BACKENDS
from ovembed.bench.store import SearchOptions, run_search
from ovembed.bench.store_reembed import ReembedOptions, reembed_text, run_reembed
from ovembed.bench.store_report import search_text
from ovembed.cli.common import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    INT_LIST,
    POSITIVE_INT,
    Decorator,
    OvembedGroup,
    api_key_option,
    command_line,
    model_folder_option,
    positive,
    service_url,
    url_option,
    usage,
)


@click.group(cls=OvembedGroup, short_help="speed and resources: engine vs peers, a service under load, soak, memory, stores")
def bench() -> None:
    """Speed and resource measurements: ours against peers, a service under load, memory, stores."""


def json_file_option(help: str = "write the figures to this file") -> Decorator:
    return click.option("--json", "json_path", type=click.Path(path_type=Path), help=help)


def plots_option() -> Decorator:
    return click.option("--plots", type=click.Path(path_type=Path), help="write PNG plots into this folder")


def _show(report: dict, text: str, json_path: Path | None, plots: Path | None = None,
          charts: Callable[[dict, Path], list[Path]] | None = None) -> None:
    click.echo(text)
    if json_path:
        write_json(json_path, report)
    if plots and charts:
        for path in charts(report, plots):
            click.echo(f"plot: {path}")


# --- engine and http --------------------------------------------------------------------------------


def _backend_names(ctx, param, text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in LABELS]
    if not names or unknown:
        what = f"unknown backend {', '.join(unknown)}" if unknown else f"no backend in {text!r}"
        raise click.BadParameter(f"{what}; choose from {', '.join(LABELS)}")
    return list(dict.fromkeys(names))


def _check_engine(options: dict) -> None:
    """Numbers an option type cannot bound by itself: refused with a usage message, not a traceback later."""
    for name in ("seconds", "min_runs", "throughput_tokens", "corpus_batch"):
        positive(options[name], f"--{name.replace('_', '-')}")
    for name in ("corpus_texts", "long", "long_pytorch"):
        if options[name] < 0:
            raise usage(f"--{name.replace('_', '-')} must be 0 (off) or positive")
    lengths = [options["throughput_tokens"], *options["latency_tokens"], options["long"], options["long_pytorch"]]
    if min(n for n in lengths if n) < 3:
        raise usage("texts need at least 3 tokens ([CLS] text [SEP])")


@bench.command(short_help="ours vs PyTorch, ONNX Runtime and OpenVINO peers: same weights, same token ids")
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option("--bge-m3-architecture", is_flag=True, help="build and use a random-weight BGE-M3 (568M)")
@click.option("--outliers", is_flag=True,
              help="measure a copy of the model with outlier channels (add the int8-adapted backend to see what "
                   "`ovembed quantize` makes of it)")
@click.option("--name", help="the model's name in the report and plots (default: the folder's name)")
@click.option("--backends", default=",".join(DEFAULT_BACKENDS), show_default=True, callback=_backend_names,
              help=f"comma-separated, from {', '.join(LABELS)}")
@click.option("--cache", type=click.Path(path_type=Path), default=".bench", show_default=True,
              help="where converted models and ONNX exports are kept between runs")
@click.option("--seconds", type=float, default=5.0, show_default=True,
              help="time per measurement (at least --min-runs runs)")
@click.option("--min-runs", type=int, default=10, show_default=True)
@click.option("--latency-tokens", type=INT_LIST, default="16,128,512", show_default=True, help="1xN latency shapes")
@click.option("--batches", type=INT_LIST, default="1,8,32", show_default=True, help="throughput batch sizes")
@click.option("--throughput-tokens", type=int, default=128, show_default=True,
              help="tokens per text for batches and concurrency")
@click.option("--concurrency", type=INT_LIST, default="1,4", show_default=True,
              help="concurrent callers, one text each")
@click.option("--corpus", callback=lambda ctx, param, value: Path(value) if value else None, metavar="FILE",
              help="corpus.jsonl of real paragraphs for tokens/s, e.g. XQuAD's (left out: that part is skipped)")
@click.option("--corpus-texts", type=int, default=0, show_default=True,
              help="use this many paragraphs, spread over the file (0: all)")
@click.option("--corpus-batch", type=int, default=32, show_default=True, help="texts per call on the length-sorted corpus")
@click.option("--hint", type=click.Choice(["LATENCY", "THROUGHPUT"]), default="LATENCY", show_default=True,
              help="OpenVINO performance hint")
@click.option("--long", type=int, default=0, help="also time one text of this many tokens (OpenVINO backends)")
@click.option("--long-pytorch", type=int, default=0, help="the same for PyTorch (slow)")
@json_file_option()
@plots_option()
def engine(json_path, plots, **options) -> None:
    """Each backend on the same weights and token ids, one child process each, one after the other: latency
    per 1xN shape, throughput per batch size and per number of concurrent callers, memory, and with --corpus
    tokens/s on real paragraphs. SOURCE is a Hugging Face model folder (or give --bge-m3-architecture)."""
    from ovembed.bench.plots import engine_plots

    _check_engine(options)
    report = run_engine(EngineOptions(**options, command=command_line()))
    _show(report, engine_text(report), json_path, plots, engine_plots)


@bench.command(short_help="a running service under N concurrent clients (optionally vs the engine)")
@url_option(help="the service, e.g. http://127.0.0.1:8019 (required)")
@click.option("--model", help="model name to ask for (default: the service's default)")
@click.option("--concurrency", type=INT_LIST, default="1,8,32", show_default=True, help="clients, comma-separated")
@click.option("--tokens", type=INT_LIST, default="16,128", show_default=True, help="tokens per text, comma-separated")
@click.option("--seconds", type=float, default=5.0, show_default=True, help="time per (concurrency, tokens) row")
@click.option("--engine-model", type=click.Path(path_type=Path),
              help="also time this model folder in-process on the same texts, before the load")
@api_key_option()
@json_file_option()
@plots_option()
def http(json_path, plots, **options) -> None:
    """Drive a running service with concurrent clients, one text per request, for each (concurrency, tokens)
    row; with --engine-model, compare it with the engine in-process (timed before the load, not during it)."""
    from ovembed.bench.plots import http_plots

    if not options["url"]:
        raise usage("give --url (or set OVEMBED_URL)")
    report = run_http(HttpOptions(**options, command=command_line()))
    _show(report, http_text(report), json_path, plots, http_plots)


# --- mixed traffic ----------------------------------------------------------------------------------


def _url_or_model(url: str | None, model) -> str | None:
    """The service to drive (soak and mixed): --url (or OVEMBED_URL) or --model, exactly one."""
    url = service_url(url, model)
    if not url and not model:
        raise usage("give --url (a running service) or --model (a folder to serve)")
    if url and model:
        raise usage("--url and --model exclude each other")
    return url


def _server_env(items: tuple[str, ...]) -> dict[str, str]:
    """--server-env NAME=VALUE items (soak and mixed) as the server's extra environment."""
    bad = [item for item in items if "=" not in item or not item.split("=", 1)[0]]
    if bad:
        raise usage(f"--server-env takes NAME=VALUE, not {bad[0]!r}")
    return dict(item.split("=", 1) for item in items)


def _mixed_options(url, model, server_env, **settings) -> MixedOptions:
    """Numbers an option type cannot bound by itself, and the options that go together: a usage message each."""
    url = _url_or_model(url, model)
    if url and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname):
        raise usage(f"--url must be an http:// or https:// address, not {url!r}")
    for flag in ("seconds", "timeout", "max_query_p99_ms", "max_query_p99_ratio", "min_doc_share"):
        positive(settings[flag], f"--{flag.replace('_', '-')}")
    for flag in ("warmup", "query_interval_ms"):
        if settings[flag] < 0:
            raise usage(f"--{flag.replace('_', '-')} must be 0 or more")
    if min(settings["query_tokens"], *settings["doc_tokens"]) < 8:
        raise usage("--query-tokens and --doc-tokens must be at least 8 (a text's number, a word, [CLS] and [SEP])")
    if (server_env or settings["log"]) and not model:
        raise usage("--server-env and --log go with --model")
    return MixedOptions(url=url, model=model, server_env=_server_env(server_env), **settings)


@bench.command(short_help="queries under document load: latency and throughput, each alone and together, as ratios")
@url_option(help="a running service, e.g. http://127.0.0.1:8019")
@model_folder_option(required=False, help="a model folder: start `ovembed serve` for it and sample its RSS")
@click.option("--served-model", help="the `model` field to send (default: the service's default model)")
@click.option("--seconds", type=float, default=20.0, show_default=True, help="length of each of the three phases")
@click.option("--warmup", type=float, default=3.0, show_default=True,
              help="seconds of both loads together before the phases, not timed")
@click.option("--query-clients", type=POSITIVE_INT, default=1, show_default=True)
@click.option("--query-tokens", type=POSITIVE_INT, default=16, show_default=True, help="tokens per query")
@click.option("--query-interval-ms", type=float, default=50.0, show_default=True,
              help="one query every this many ms per client, by the clock (0: back to back)")
@click.option("--doc-clients", type=POSITIVE_INT, default=3, show_default=True)
@click.option("--doc-batch", type=POSITIVE_INT, default=32, show_default=True, help="texts per document request")
@click.option("--doc-tokens", type=INT_LIST, default="250", show_default=True,
              help="tokens per document; a list (512,8192): each request's texts cycle through them")
@click.option("--max-query-p99-ms", type=float, help="target: query p99 under load, in ms")
@click.option("--max-query-p99-ratio", type=float, help="target: query p99 under load / query p50 alone")
@click.option("--min-doc-share", type=float, default=0.75, show_default=True,
              help="target: document tokens/s under queries / alone")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="seconds per request")
@click.option("--server-env", multiple=True, metavar="NAME=VALUE",
              help="--model: one more environment variable for the server (repeatable)")
@click.option("--log", type=click.Path(path_type=Path), help="--model: the server's log file (default: a temporary file)")
@json_file_option("write the whole report to this file")
def mixed(json_path, **options) -> int:
    """How much a short query suffers while bulk documents saturate the service, and how much the documents
    suffer from the queries. After a warm-up, three phases of --seconds each: queries alone (open loop, one
    text per request every --query-interval-ms per client), documents alone (closed loop, --doc-batch texts per
    request, back to back), both at once. Prints each phase's query latency and document tokens/s, then the
    ratios: query p50/p95/p99 under load over query p50 alone, document tokens/s under queries over alone.
    Exit 0 if there were no errors and every given target holds; 1 otherwise."""
    report = run_mixed(_mixed_options(**options), progress=progress("mixed"))
    report["command"] = command_line()
    _show(report, mixed_text(report), json_path)
    return EXIT_OK if report["passed"] else EXIT_CHECK_FAILED


# --- soak and memory --------------------------------------------------------------------------------


def _soak_options(url, model, pid, minutes, route, server_env, max_slope, max_growth, **settings) -> SoakOptions:
    """The soak's options, checked in the order the tools always checked them."""
    url = _url_or_model(url, model)
    for flag in ("clients", "max_tokens", "queue_texts", "batch_tokens", "infer_requests", "timeout"):
        positive(settings[flag], f"--{flag.replace('_', '-')}")
    positive(minutes, "--minutes")
    if url and (not url.startswith("http://") or urlsplit(url).hostname not in LOOPBACK):
        raise usage(f"--url must be http:// on loopback ({', '.join(LOOPBACK)}), not {url!r}")
    if model and pid is not None:
        raise usage("--pid goes with --url (with --model the command knows its server's pid)")
    if pid is not None and not psutil.pid_exists(pid):
        raise usage(f"no process {pid}")
    if settings["warmup"] is not None and not 0 <= settings["warmup"] < minutes * 60:
        raise usage("--warmup must be at least 0 and shorter than the run")
    if settings["max_tokens"] < 16:
        raise usage("--max-tokens must be at least 16")
    if server_env and not model:
        raise usage("--server-env goes with --model")
    return SoakOptions(url=url, model=model, pid=pid, seconds=minutes * 60, max_slope_mb_min=max_slope,
                       max_growth_pct=max_growth, routes=ROUTES if route == "both" else (route,),
                       server_env=_server_env(server_env), **settings)


@bench.command(short_help="soak a service on loopback: errors, p99, RSS growth and the queue bound")
@url_option(help="a running service on loopback, e.g. http://127.0.0.1:8019")
@model_folder_option(required=False, help="a model folder: start `ovembed serve` for it and watch its RSS")
@click.option("--pid", type=int, help="with --url: the server's process id, to sample its RSS")
@click.option("--clients", type=int, default=64, show_default=True)
@click.option("--minutes", type=float, default=5.0, show_default=True)
@click.option("--warmup", type=float, help="seconds excluded from the leak check (default: 20% of the run, max 60)")
@click.option("--max-tokens", type=int, default=8192, show_default=True, help="longest document, in tokens")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--route", type=click.Choice(["both", *ROUTES]), default="both", show_default=True,
              help="both: alternate")
@click.option("--served-model", help="the `model` field to send (default: the service's default model)")
@click.option("--queue-texts", type=int, help="--model: OVEMBED_MAX_QUEUE_TEXTS for the server")
@click.option("--batch-tokens", type=int, help="--model: OVEMBED_BATCH_TOKENS for the server")
@click.option("--infer-requests", type=int, help="--model: OVEMBED_WORKERS_INFER for the server")
@click.option("--server-env", multiple=True, metavar="NAME=VALUE",
              help="--model: one more environment variable for the server (repeatable)")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="seconds per request")
@click.option("--max-slope", type=float, default=1.0, show_default=True, help="leak check: MB/min after warm-up")
@click.option("--max-growth", type=float, default=5.0, show_default=True, help="leak check: % growth after warm-up")
@click.option("--log", type=click.Path(path_type=Path), help="--model: the server's log file (default: a temporary file)")
@json_file_option("write the whole report (with RSS samples) to this file")
def soak(json_path, **options) -> int:
    """Soak a service on loopback with mixed-length concurrent clients (mostly short queries, some paragraphs,
    rare long documents; a 503 with Retry-After is waited out and retried). Exit 0 only if there were no
    errors, the queue never held more than its bound, RSS did not grow after the warm-up and the server is
    still alive; 1 if a check failed."""
    report = run_soak(_soak_options(**options), progress=progress("soak"))
    report["command"] = command_line()
    _show(report, soak_table(report), json_path)
    return EXIT_OK if report["passed"] else EXIT_CHECK_FAILED


@bench.command(short_help="idle, warm and peak RSS of the worst merged call per setting; the sizing formula")
@model_folder_option()
@click.option("--batch-tokens", type=INT_LIST, default="4096,16384", show_default=True, help="token budgets")
@click.option("--infer-requests", type=INT_LIST, default="1,2", show_default=True, help="infer requests in flight")
@click.option("--scenarios", default="batch,long", show_default=True,
              help="batch: full 512-token batches; long: max-length texts")
@click.option("--max-length", type=int, help="longest text (default: the model's max length)")
@click.option("--lanes", type=click.IntRange(1, 2), default=1, show_default=True,
              help="runtimes per model, as OVEMBED_LANES (2: the model compiled twice)")
@json_file_option()
def memory(model, batch_tokens, infer_requests, scenarios, max_length, lanes, json_path) -> int:
    """Idle, warm and peak RSS of the worst merged call per setting (token budget x infer requests), one child
    process each; prints the table and the fitted sizing formula. Exit 1 if a setting failed."""
    names = [s for s in scenarios.split(",") if s]
    if not names or set(names) - {"batch", "long"}:
        raise usage(f"--scenarios takes batch and/or long, not {scenarios!r}")
    positive(max_length, "--max-length")
    report = run_memory(model, batch_tokens, infer_requests, names, max_length, progress=progress("soak"), lanes=lanes)
    report["command"] = command_line()
    _show(report, memory_table(report), json_path)
    return EXIT_CHECK_FAILED if any("error" in r for r in report["rows"]) else EXIT_OK


# --- store ------------------------------------------------------------------------------------------


@bench.group(cls=OvembedGroup, short_help="search, memory and writes per store backend; re-embedding against the engine")
def store() -> None:
    """Stores: search, memory, writes and re-embedding per backend, and the re-embedding pipeline against the
    engine."""


def _store_backends(ctx, param, text: str | None) -> list[str]:
    names = [name.strip() for name in (text or "").split(",") if name.strip()]
    if unknown := [name for name in names if name not in STORE_BACKENDS]:
        raise click.BadParameter(f"unknown backend {', '.join(unknown)}; choose from {', '.join(STORE_BACKENDS)}")
    return names


@store.command(short_help="fill each store; dense and sparse search, memory, cold start, writes, sizes, reembed")
@click.option("--db", multiple=True,
              help="a SQLite path or postgresql:// URL of an empty store (repeatable; default: a temp SQLite file)")
@click.option("--backends", callback=_store_backends, metavar="sqlite,postgresql",
              help="throw-away stores to measure: a temp SQLite file and/or an embedded PostgreSQL + pgvector")
@click.option("--postgres-embedded", is_flag=True, help="also a throw-away embedded PostgreSQL (as --backends postgresql)")
@click.option("--n", type=POSITIVE_INT, default=100_000, show_default=True, help="chunks to store")
@click.option("--dim", type=POSITIVE_INT, default=1024, show_default=True)
@click.option("--queries", type=POSITIVE_INT, default=100, show_default=True,
              help="timed queries, dense and sparse each (after 5 warm-up ones)")
@click.option("--k", type=POSITIVE_INT, default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--sparse/--no-sparse", default=True, show_default=True, help="store lexical weights; time sparse search")
@click.option("--corpus", type=click.Choice(["graded", "clusters"]), default="graded", show_default=True,
              help="dense vectors: neighbourhoods graded like real embeddings', or flat topic clusters (an ANN's worst "
                   "case: a topic's members all equally far apart)")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path),
              help="keep the filled stores and their ground truth in this folder (for --reuse)")
@click.option("--reuse", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="search the stores an earlier --keep run left in this folder, without filling (same options)")
@click.option("--reembed-n", type=click.IntRange(min=0), default=20_000, show_default=True,
              help="chunks of the re-embedding-while-ingesting store (0: skip)")
@click.option("--pg-shared-buffers", default="4GB", show_default=True,
              help="the embedded PostgreSQL's shared_buffers (its searched indexes are prewarmed into them)")
@json_file_option()
def search(json_path, db, backends, postgres_embedded, **options) -> int:
    """Fill each store with the same seeded chunks (dense vectors and lexical weights), one at a time, and
    measure it in child processes: fill and index build; dense and sparse search latency and recall@k against
    exact search, in a process that holds nothing but the store (its RSS, peak RSS and cold start: open to first
    answer); the next queries after writes to another space and to the searched one; sizes on disk; and the
    re-embedding job while documents are ingested, on a store of --reembed-n chunks. Exit 1 if a store failed."""
    if postgres_embedded and "postgresql" not in backends:
        backends.append("postgresql")
    report = run_search(SearchOptions(db=list(db), backends=backends, **options, command=command_line()))
    _show(report, search_text(report), json_path)
    failed = any("error" in r or "error" in r.get("reembed", {}) for r in report["results"])
    return EXIT_CHECK_FAILED if failed else EXIT_OK


@store.command(short_help="re-embedding rows/s vs the engine's batch texts/s on the same chunks")
@model_folder_option()
@click.option("--data", required=True, help="documents to ingest (.jsonl, .txt/.md, or a folder)")
@click.option("--db", help="a SQLite path or postgresql:// URL of an empty store (default: a temp SQLite file)")
@click.option("--postgres-embedded", is_flag=True, help="use a throw-away embedded PostgreSQL + pgvector")
@click.option("--batch", type=POSITIVE_INT, default=256, show_default=True,
              help="chunks per page, for the job and the engine alike")
@click.option("--repeat", type=POSITIVE_INT, default=4, show_default=True,
              help="ingest the corpus this many times, texts varied")
@click.option("--limit", type=int, default=0, show_default=True, help="use only the first N documents (0: all)")
@json_file_option()
def reembed(json_path, **options) -> None:
    """Ingest a corpus, re-embed it into a second space made by the same weights, and compare the job's rows/s
    with the engine's own batch texts/s on the same chunk texts, timed just before and just after the job."""
    report = run_reembed(ReembedOptions(**options, command=command_line()))
    _show(report, reembed_text(report), json_path)
