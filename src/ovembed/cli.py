"""The `ovembed` command. Exit codes: 0 ok, 1 a check failed (e.g. the accuracy gate), 2 usage or input error."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from ovembed.errors import ErrorKind, OvembedError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE = 0, 1, 2
# Failures of the world rather than of the input count as failed checks.
EXIT_CODES = {ErrorKind.GATE_FAILED: EXIT_CHECK_FAILED, ErrorKind.BACKEND: EXIT_CHECK_FAILED,
              ErrorKind.HUB_UNREACHABLE: EXIT_CHECK_FAILED, ErrorKind.UNAVAILABLE: EXIT_CHECK_FAILED}


def _quantize(args: argparse.Namespace) -> int:
    try:
        from ovembed.convert import pipeline, verify
    except ImportError as exc:
        raise OvembedError(
            ErrorKind.VALIDATION,
            f"quantize needs the conversion extra ({exc.name} is missing): "
            "pip install -c constraints.txt 'ovembed[convert]'",
        ) from None
    thresholds = verify.GateThresholds(args.min_cosine_mean, args.min_cosine_min)
    manifest, output, failures = pipeline.run_quantize(
        args.model, output=args.output, precision=args.precision, max_length=args.max_length,
        calibration=args.calibration, gate=not args.no_gate, thresholds=thresholds, model_id=args.model_id,
    )
    report = manifest.verification
    if args.json:
        print(json.dumps({"output": str(output), "manifest": manifest.__dict__}, default=str))
    else:
        print(f"wrote {output}  ({manifest.source}, {manifest.precision}, dim {manifest.dimension}, "
              f"max length {manifest.max_length}, outputs {'+'.join(manifest.outputs)})")
        for key, value in report.items():
            if key != "gate":
                print(f"  {key:28s} {value}")
        print(f"  gate: {'passed' if not failures else 'FAILED (kept because of --no-gate): ' + '; '.join(failures)}")
    return EXIT_OK


def _embed(args: argparse.Namespace) -> int:
    from ovembed.engine import load_model

    texts = list(args.texts)
    if texts == ["-"]:
        texts = [line.rstrip("\n") for line in sys.stdin]
    if not texts:
        raise OvembedError(ErrorKind.VALIDATION, "no texts: pass them as arguments, or '-' to read lines from stdin")
    model = load_model(args.model)
    dense = args.dense or not (args.sparse or args.colbert)
    result = model.embed(texts, dense=dense, sparse=args.sparse, colbert=args.colbert,
                         normalize=not args.no_normalize, truncate=not args.no_truncate)
    out = sys.stdout
    for i in range(len(texts)):
        row: dict[str, object] = {}
        if result.dense is not None:
            row["dense"] = result.dense[i].tolist()
        if result.sparse is not None:
            row["sparse"] = result.sparse[i]
        if result.colbert is not None:
            row["colbert"] = result.colbert[i].tolist()
        out.write(json.dumps(row) + "\n")
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from ovembed.config import Settings
    from ovembed.server import logs
    from ovembed.server.app import create_app
    from ovembed.server.protocol import with_header_timeout

    flags = {"models": args.model, "default_model": args.default, "host": args.host, "port": args.port,
             "workers_infer": args.workers_infer, "preload": args.preload}
    try:
        settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        raise OvembedError(ErrorKind.VALIDATION, f"invalid setting: {exc.errors()[0]['loc'][0]}: "
                           f"{exc.errors()[0]['msg']}") from None
    logs.configure(settings.log_level, settings.log_json)
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=settings.graceful_timeout_s, log_level=settings.log_level,
                            http=with_header_timeout(settings.header_timeout_s))
    server = uvicorn.Server(config)
    # Uvicorn drains on SIGTERM, then re-raises the signal once it has restored the previous handler;
    # with the default handler that kills the process (exit -15) after a clean shutdown. A no-op
    # handler makes a drained shutdown exit 0, as orchestrators expect.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run()
    return EXIT_OK if server.started else EXIT_CHECK_FAILED


def _validate(args: argparse.Namespace) -> int:
    from ovembed.validate import validate

    if not args.url.startswith(("http://", "https://")):
        raise OvembedError(ErrorKind.VALIDATION, f"--url must start with http:// or https://, not {args.url!r}")
    for flag, value in (("--queries", args.queries), ("--max-p95-ms", args.max_p95_ms), ("--timeout", args.timeout),
                        ("--expect-dim", args.expect_dim)):
        if value is not None and value <= 0:
            raise OvembedError(ErrorKind.VALIDATION, f"{flag} must be positive")
    report = validate(args.url.rstrip("/"), expect_model=args.expect_model, expect_dim=args.expect_dim,
                      max_p95_ms=args.max_p95_ms, queries=args.queries,
                      api_key=args.api_key or os.environ.get("OVEMBED_API_KEY"), timeout=args.timeout)
    print(json.dumps(report.as_json()) if args.json else report.table())
    return EXIT_OK if report.passed else EXIT_CHECK_FAILED


DEFAULT_DB = os.environ.get("OVEMBED_DB", "data/ovembed.db")


def _rag(args: argparse.Namespace):
    from ovembed.rag import RAG, make_embedder
    from ovembed.store import open_store

    embedder = make_embedder(args.model, args.url, args.api_key or os.environ.get("OVEMBED_API_KEY"))
    return RAG(open_store(args.db), embedder)


def _ingest(args: argparse.Namespace) -> int:
    from ovembed.rag import read_documents

    docs = read_documents(args.path)  # all read and checked before anything is written
    rag = _rag(args)
    with rag.store:
        stats = rag.ingest(docs, chunk_tokens=args.chunk_tokens, overlap=args.overlap)
    print(json.dumps(stats) if args.json else
          f"ingested {stats['documents']} documents as {stats['chunks']} chunks into {args.db}"
          + (f" ({stats['empty']} empty documents skipped)" if stats["empty"] else ""))
    return EXIT_OK


def _search(args: argparse.Namespace) -> int:
    rag = _rag(args)
    with rag.store:
        results = rag.search(args.query, k=args.k, mode=args.mode, rerank=args.rerank)
    if args.json:
        print(json.dumps([{"rank": i + 1, "score": r.score, "scores": r.scores, "chunk_id": r.chunk.id,
                           "doc_id": r.chunk.doc_id, "text": r.chunk.text, "metadata": r.chunk.metadata}
                          for i, r in enumerate(results)], ensure_ascii=False))
    else:
        for i, r in enumerate(results, 1):
            preview = " ".join(r.chunk.text.split())[:100]
            print(f"{i:>3}  {r.score:8.4f}  {r.chunk.doc_id[:30]:30s}  {preview}")
    return EXIT_OK


def _spaces(args: argparse.Namespace) -> int:
    from ovembed.store import open_store

    with open_store(args.db) as store:
        if args.action == "activate":
            store.activate(args.name, force=args.force)
            print(f"active space: {args.name}")
        elif args.action == "drop":
            store.drop_space(args.name)
            print(f"dropped space {args.name}")
        statuses = store.spaces()
    if args.action == "list":
        if args.json:
            print(json.dumps([{"name": s.space.name, "model_id": s.space.model_id, "precision": s.space.precision,
                               "dimension": s.space.dimension, "sparse": s.space.sparse, "active": s.active,
                               "vectors": s.vectors, "chunks": s.chunks, "complete": s.complete} for s in statuses]))
        else:
            for s in statuses:
                mark = "*" if s.active else " "
                print(f"{mark} {s.space.name:30s} {s.space.model_id:40s} {s.space.dimension:>5}d "
                      f"{s.vectors}/{s.chunks} {'complete' if s.complete else 'incomplete'}")
    return EXIT_OK


def _reembed(args: argparse.Namespace) -> int:
    from ovembed.rag import embedder_for
    from ovembed.store import open_store

    target = args.to
    api_key = args.api_key or os.environ.get("OVEMBED_API_KEY")
    if args.source:
        with open_store(args.db) as store:
            store.space(args.source)  # must exist: a clear error for a typo
    if args.engine == "ray":
        from ovembed.reembed.ray_backend import reembed_ray

        stats = reembed_ray(args.db, target, batch=args.batch, activate=args.activate, actors=args.actors,
                            api_key=api_key)
    else:
        from ovembed.reembed import reembed

        stats = reembed(args.db, embedder_for(target, api_key), batch=args.batch, activate=args.activate,
                        progress=not args.json, retries=args.retries)
    if args.json:
        print(json.dumps(stats.as_dict()))
    else:
        print(f"space {stats.space}: {stats.written} vectors written ({stats.reused} reused for identical texts), "
              f"{stats.already} already there, {stats.chunks} chunks; {stats.seconds:.1f} s, "
              f"{stats.rows_per_s:.1f} rows/s" + ("; now active" if stats.activated else
                                                   f"; activate with `ovembed spaces activate {stats.space}`"))
    return EXIT_OK


def _eval(args: argparse.Namespace) -> int:
    from ovembed.evaluate.quality import MODES, evaluate, report, table

    modes = list(MODES) if args.mode == "all" else [args.mode]
    rows = evaluate(args.model, args.data, k=args.k, cache=None if args.no_cache else Path(args.cache_dir),
                    api_key=args.api_key or os.environ.get("OVEMBED_API_KEY"), modes=modes,
                    cross_lingual=args.cross_lingual)
    if args.report:
        Path(args.report).write_text(report(rows, "ovembed " + " ".join(sys.argv[1:])))
    print(json.dumps(rows, ensure_ascii=False) if args.json else table(rows))
    return EXIT_OK


def _bench(args: argparse.Namespace) -> int:
    from ovembed.evaluate import bench

    rest = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    bench.main(rest, prog="ovembed bench")
    return EXIT_OK


def _store_args(p: argparse.ArgumentParser, embed: bool = True) -> None:
    p.add_argument("--db", default=DEFAULT_DB, help="SQLite file or postgresql://... (default: data/ovembed.db)")
    if embed:
        p.add_argument("--model", help="model folder, embedding in-process")
        p.add_argument("--url", help="a running `ovembed serve`, e.g. http://127.0.0.1:8019")
        p.add_argument("--api-key", help="Bearer key for --url (default: env OVEMBED_API_KEY)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ovembed", description="BGE-M3 and friends as INT8 OpenVINO models on the CPU.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = sub.add_parser("quantize", help="convert a Hugging Face model to a verified OpenVINO model folder",
                       description="Convert a hub id or local folder to OpenVINO (INT8 by default), verify it "
                       "against fp32 PyTorch and write models/<name>-<precision>/ only if it passes the gate.")
    q.add_argument("model", nargs="?", default="BAAI/bge-m3", help="hub id or local folder (default: BAAI/bge-m3)")
    q.add_argument("--model-id", help="for a local folder: the hub id it is a copy of, recorded in the manifest")
    q.add_argument("--output", type=Path, help="output folder (default: models/<name>-<precision>)")
    q.add_argument("--precision", default="int8", choices=["int8", "int8-weights", "fp16", "fp32"],
                   help="int8: static weights+activations (fastest); int8-weights: weight-only (default: int8)")
    q.add_argument("--max-length", type=int, help="max tokens per text (default: the model's)")
    q.add_argument("--calibration", type=Path, help="text file, one calibration text per line (default: built-in)")
    q.add_argument("--no-gate", action="store_true", help="keep the model even if it fails the accuracy gate")
    q.add_argument("--min-cosine-mean", type=float, default=0.99, help="gate: mean dense cosine to fp32 (0.99)")
    q.add_argument("--min-cosine-min", type=float, default=0.97, help="gate: lowest dense cosine to fp32 (0.97)")
    q.add_argument("--json", action="store_true", help="print the manifest as JSON")
    q.set_defaults(func=_quantize)

    e = sub.add_parser("embed", help="embed texts with a local model folder; one JSON line per text")
    e.add_argument("--model", required=True, type=Path, help="model folder made by `ovembed quantize`")
    e.add_argument("--dense", action="store_true", help="dense vector (the default when no output is named)")
    e.add_argument("--sparse", action="store_true", help="lexical weights {indices, values} (BGE-M3)")
    e.add_argument("--colbert", action="store_true", help="multi-vector ColBERT output (BGE-M3)")
    e.add_argument("--no-normalize", action="store_true", help="do not L2-normalise dense/colbert vectors")
    e.add_argument("--no-truncate", action="store_true", help="fail on texts over the max length instead of cutting")
    e.add_argument("texts", nargs="*", metavar="TEXT", help="texts, or '-' to read one per line from stdin")
    e.set_defaults(func=_embed)

    s = sub.add_parser("serve", help="run the HTTP embedding service",
                       description="Serve one or more model folders over HTTP (settings also from OVEMBED_* env).")
    s.add_argument("--model", action="append", help="model folder, or a hub id / name found under models/; repeatable")
    s.add_argument("--default", help="the model used when a request names none (default: the first)")
    s.add_argument("--host", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default 8019)")
    s.add_argument("--workers-infer", type=int, help="OpenVINO infer requests in flight per model")
    s.add_argument("--preload", action=argparse.BooleanOptionalAction, default=None,
                   help="load models at start-up (default; OPENVINO_PRELOAD_MODELS) or on first use")
    s.set_defaults(func=_serve)

    i = sub.add_parser("ingest", help="read, chunk, embed and store documents (.txt, .md, .jsonl, a folder, or -)")
    i.add_argument("path", help="file, folder, or '-' for JSON lines on stdin")
    i.add_argument("--chunk-tokens", type=int, default=512, help="tokens per chunk (capped at the model's max)")
    i.add_argument("--overlap", type=int, default=64, help="tokens shared by neighbouring chunks")
    _store_args(i)
    i.set_defaults(func=_ingest)

    f = sub.add_parser("search", help="search the active space: dense, sparse (lexical) or hybrid")
    f.add_argument("query")
    f.add_argument("-k", type=int, default=10, help="results (default 10)")
    f.add_argument("--mode", default="dense", choices=["dense", "sparse", "hybrid"])
    f.add_argument("--rerank", action="store_true", help="rerank candidates with ColBERT (M3's combined score)")
    _store_args(f)
    f.set_defaults(func=_search)

    r = sub.add_parser("reembed", help="fill a new space (another model) from the stored chunk texts, resumably")
    r.add_argument("--to", required=True, help="model folder or service URL that makes the new space's vectors")
    r.add_argument("--from", dest="source", help="the space being replaced (checked to exist)")
    r.add_argument("--batch", type=int, default=256, help="chunks per page (default 256)")
    r.add_argument("--activate", action="store_true", help="switch search to the new space when complete")
    r.add_argument("--engine", default="local", choices=["local", "ray"], help="run here, or on Ray (ovembed[ray])")
    r.add_argument("--actors", type=int, default=2, help="Ray: model actors (default 2)")
    r.add_argument("--retries", type=int, default=8, help="PostgreSQL reconnects in a row without progress before "
                   "giving up (default 8, about a minute of outage; a rerun resumes anyway)")
    r.add_argument("--db", default=DEFAULT_DB, help="SQLite file or postgresql://... (default: data/ovembed.db)")
    r.add_argument("--api-key", help="Bearer key for a service URL (default: env OVEMBED_API_KEY)")
    r.add_argument("--json", action="store_true", help="print the summary as JSON (and no progress bar)")
    r.set_defaults(func=_reembed)

    ev = sub.add_parser("eval", help="retrieval (BEIR folders) and STS quality of models, side by side")
    ev.add_argument("--data", action="append", required=True,
                    help="a BEIR folder (corpus/queries/qrels, .gz allowed) or an STS folder (pairs.tsv); repeatable")
    ev.add_argument("--model", action="append", required=True, help="model folder or service URL; repeatable")
    ev.add_argument("--mode", default="dense", choices=["dense", "sparse", "colbert", "hybrid", "all"],
                    help="BGE-M3 output to score with; hybrid = M3's 0.4 dense + 0.2 sparse + 0.4 colbert (default dense)")
    ev.add_argument("--cross-lingual", action="store_true",
                    help="also run each retrieval folder's queries against its siblings' corpora (xquad/de→en, ...)")
    ev.add_argument("--k", type=int, default=10, help="cut-off for nDCG, Recall and MRR (default 10)")
    ev.add_argument("--report", help="also write the table as a Markdown report to this file")
    ev.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "ovembed" / "eval"),
                    help="corpus embeddings cache (per model and content)")
    ev.add_argument("--no-cache", action="store_true")
    ev.add_argument("--api-key", help="Bearer key for service URLs (default: env OVEMBED_API_KEY)")
    ev.add_argument("--json", action="store_true",
                    help='print rows {"model","dataset","mode","ndcg@10","recall@10","recall@100","mrr@10"|"spearman"}')
    ev.set_defaults(func=_eval)

    b = sub.add_parser("bench", add_help=False, help="speed: ours vs PyTorch, ONNX Runtime and OpenVINO peers; "
                       "engine | http (see `ovembed bench --help`)")
    b.add_argument("bench_args", nargs=argparse.REMAINDER)
    b.set_defaults(func=_bench)

    sp = sub.add_parser("spaces", help="list, activate (switch search over, or roll back) or drop embedding spaces")
    sp.add_argument("action", choices=["list", "activate", "drop"])
    sp.add_argument("name", nargs="?", help="space name (for activate and drop)")
    sp.add_argument("--force", action="store_true", help="activate even if the space is incomplete")
    _store_args(sp, embed=False)
    sp.set_defaults(func=_spaces)

    v = sub.add_parser("validate", help="check a running service: health, model, dimension, embeddings, latency",
                       description="Check a deployed service as the BGE-M3 upgrade guide does. Exit 0 when every "
                       "check passes, 1 when one fails (including an unreachable service), 2 for usage errors.")
    v.add_argument("--url", default="http://localhost:8019", help="the service (default http://localhost:8019)")
    v.add_argument("--expect-model", metavar="ID", help="the default model must answer to this id or alias")
    v.add_argument("--expect-dim", type=int, metavar="N", help="the default model's dimension must be N")
    v.add_argument("--max-p95-ms", type=float, default=200.0, help="latency budget for one short query (200)")
    v.add_argument("--queries", type=int, default=50, help="sequential one-text queries to time (50)")
    v.add_argument("--api-key", metavar="KEY", help="Bearer key (default: env OVEMBED_API_KEY)")
    v.add_argument("--timeout", type=float, default=10.0, help="seconds per request (10)")
    v.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    v.set_defaults(func=_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own parser: `ovembed bench --help` lists bench's subcommands
        argv = ["bench", "--", *argv[1:]]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except OvembedError as exc:
        print(f"ovembed {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_CODES.get(exc.kind, EXIT_USAGE)
    except KeyboardInterrupt:
        print(f"ovembed {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
