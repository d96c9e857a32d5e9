"""Commands that make, use and serve a model folder: `quantize`, `embed`, `serve`."""

from __future__ import annotations

import errno
import json
import logging
import signal
import socket
from pathlib import Path

import click

from ovembed.cli.common import EXIT_CHECK_FAILED, EXIT_OK, json_option, model_folder_option, read_lines_or_args, usage
from ovembed.errors import ErrorKind, OvembedError

PRECISIONS = ("int8", "int8-weights", "fp16", "fp32")


@click.command(short_help="convert a Hugging Face model to a verified OpenVINO model folder")
@click.argument("model", default="BAAI/bge-m3", required=False)
@click.option("--model-id", help="for a local folder: the hub id it is a copy of, recorded in the manifest")
@click.option("--output", type=click.Path(path_type=Path), help="output folder (default: models/<name>-<precision>)")
@click.option("--precision", default="int8", show_default=True, type=click.Choice(PRECISIONS),
              help="int8: static weights+activations (fastest); int8-weights: weight-only")
@click.option("--max-length", type=int, help="max tokens per text (default: the model's)")
@click.option("--calibration", type=click.Path(path_type=Path),
              help="text file, one calibration text per line (default: built-in)")
@click.option("--no-gate", is_flag=True, help="keep the model even if it fails the accuracy gate")
@click.option("--min-cosine-mean", type=float, default=0.99, show_default=True, help="gate: mean dense cosine to fp32")
@click.option("--min-cosine-min", type=float, default=0.97, show_default=True, help="gate: lowest dense cosine to fp32")
@click.option("--if-changed", is_flag=True,
              help="do nothing when the output folder already holds MODEL at this precision (`make serve` uses it)")
@click.option("--dry-run", is_flag=True,
              help="print the output folder (and on stderr why it would be made, if it would); convert nothing")
@json_option("print the manifest as JSON")
def quantize(model: str, model_id, output, precision, max_length, calibration, no_gate, min_cosine_mean,
             min_cosine_min, if_changed, dry_run, as_json) -> None:
    """Convert MODEL (a hub id or local folder, default BAAI/bge-m3) to OpenVINO (INT8 by default), verify it
    against fp32 PyTorch and write models/<name>-<precision>/ only if it passes the accuracy gate."""
    if if_changed or dry_run:
        from ovembed.convert.target import plan, stale_reason

        # Without PyTorch: `make serve` asks this on every run. The conversion below warns about aliases itself.
        target = plan(model, precision, model_id, output, max_length,
                      warn=lambda msg: click.echo(msg, err=True) if dry_run else None)
        reason = stale_reason(target)
        if dry_run:
            return _print_plan(target, reason, as_json)
        if reason is None:
            return _print_up_to_date(target, as_json)
        click.echo(f"quantizing: {reason}", err=True)
    try:
        from ovembed.convert import pipeline, verify
    except ImportError as exc:
        raise usage(f"quantize needs the conversion extra ({exc.name} is missing): "
                    "pip install -c constraints.txt 'ovembed[convert]'") from None
    thresholds = verify.GateThresholds(min_cosine_mean, min_cosine_min)
    manifest, folder, failures = pipeline.run_quantize(
        model, output=output, precision=precision, max_length=max_length, calibration=calibration,
        gate=not no_gate, thresholds=thresholds, model_id=model_id,
    )
    if as_json:
        click.echo(json.dumps({"output": str(folder), "quantized": True, "manifest": manifest.__dict__}, default=str))
        return
    click.echo(f"wrote {folder}  ({manifest.source}, {manifest.precision}, dim {manifest.dimension}, "
               f"max length {manifest.max_length}, outputs {'+'.join(manifest.outputs)})")
    for key, value in manifest.verification.items():
        if key != "gate":
            click.echo(f"  {key:28s} {value}")
    click.echo(f"  gate: {'passed' if not failures else 'FAILED (kept because of --no-gate): ' + '; '.join(failures)}")


def _print_plan(target, reason: str | None, as_json: bool) -> None:
    """`--dry-run`: the folder on stdout, so a script can use it (`make serve` does); why it would be made on stderr."""
    if as_json:
        click.echo(json.dumps({"output": str(target.output), "source": target.source, "origin": target.origin,
                               "precision": target.precision, "up_to_date": reason is None, "reason": reason}))
        return
    click.echo(str(target.output))
    if reason is not None:
        click.echo(f"would quantize: {reason}", err=True)


def _print_up_to_date(target, as_json: bool) -> None:
    from ovembed.convert.target import describe
    from ovembed.manifest import Manifest

    if as_json:
        manifest = Manifest.read(target.output)
        click.echo(json.dumps({"output": str(target.output), "quantized": False, "manifest": manifest.__dict__},
                              default=str))
        return
    click.echo(f"{target.output} is up to date ({describe(target)}, {target.precision}): nothing to do")


@click.command(short_help="embed texts with a local model folder; one JSON line per text")
@model_folder_option()
@click.option("--dense", is_flag=True, help="dense vector (the default when no output is named)")
@click.option("--sparse", is_flag=True, help="lexical weights {indices, values} (BGE-M3)")
@click.option("--colbert", is_flag=True, help="multi-vector ColBERT output (BGE-M3)")
@click.option("--no-normalize", is_flag=True, help="do not L2-normalise dense/colbert vectors")
@click.option("--no-truncate", is_flag=True, help="fail on texts over the max length instead of cutting")
@click.argument("texts", nargs=-1, metavar="[TEXT]...")
def embed(model: Path, dense, sparse, colbert, no_normalize, no_truncate, texts) -> None:
    """Embed TEXTs (or, with '-', one text per line from stdin) with a model folder, in-process."""
    from ovembed.engine import load_model

    texts = read_lines_or_args(texts)
    if not texts:
        raise usage("no texts: pass them as arguments, or '-' to read lines from stdin")
    loaded = load_model(model)
    result = loaded.embed(texts, dense=dense or not (sparse or colbert), sparse=sparse, colbert=colbert,
                          normalize=not no_normalize, truncate=not no_truncate)
    for i in range(len(texts)):
        row: dict[str, object] = {}
        if result.dense is not None:
            row["dense"] = result.dense[i].tolist()
        if result.sparse is not None:
            row["sparse"] = result.sparse[i]
        if result.colbert is not None:
            row["colbert"] = result.colbert[i].tolist()
        click.echo(json.dumps(row))


@click.command(short_help="run the HTTP embedding service")
@click.option("--model", "models", multiple=True,
              help="model folder, or a hub id / name found under models/; repeatable")
@click.option("--default", "default_model", help="the model used when a request names none (default: the first)")
@click.option("--host", help="bind address (default 127.0.0.1)")
@click.option("--port", type=int, help="port (default 8019)")
@click.option("--workers-infer", type=int, help="OpenVINO infer requests in flight per model")
@click.option("--preload/--no-preload", default=None,
              help="load models at start-up (default; OPENVINO_PRELOAD_MODELS) or on first use")
def serve(models, default_model, host, port, workers_infer, preload) -> int:
    """Serve one or more model folders over HTTP (settings also from OVEMBED_* environment variables)."""
    import uvicorn

    from ovembed.server import logs
    from ovembed.server.app import create_app
    from ovembed.server.protocol import with_header_timeout

    settings = _settings(models=list(models) or None, default_model=default_model, host=host, port=port,
                         workers_infer=workers_infer, preload=preload)
    sockets = _listen(settings.host, settings.port)  # before any model loads: a taken port fails at once
    logs.configure(settings.log_level, settings.log_json)
    try:
        app = create_app(settings)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            access_log=False, timeout_graceful_shutdown=settings.graceful_timeout_s,
                            log_level=settings.log_level, http=with_header_timeout(settings.header_timeout_s))
    server = uvicorn.Server(config)
    # Uvicorn drains on SIGTERM, then re-raises the signal once it has restored the previous handler;
    # with the default handler that kills the process (exit -15) after a clean shutdown. A no-op
    # handler makes a drained shutdown exit 0, as orchestrators expect.
    signal.signal(signal.SIGTERM, lambda *_: None)
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        logging.getLogger("ovembed.server").info("listening on http://%s:%d", f"[{host}]" if ":" in host else host,
                                                 port)
    server.run(sockets=sockets)
    return EXIT_OK if server.started else EXIT_CHECK_FAILED


def _listen(host: str, port: int) -> list[socket.socket]:
    """The service's sockets, one per address `host` resolves to (as asyncio binds them), bound here rather than
    by uvicorn so that a taken port is one clear line and its own exit code before any model loads (uvicorn
    logs the OS error and exits 3 after its start-up has begun loading the models)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise usage(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    sockets: list[socket.socket] = []
    for family, kind, proto, _, address in dict.fromkeys(infos):
        sock = socket.socket(family, kind, proto)
        sockets.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart over TIME_WAIT
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # the IPv4 address has its own socket
        try:
            sock.bind(address)
        except OSError as exc:
            for opened in sockets:
                opened.close()
            if exc.errno == errno.EADDRINUSE:
                raise OvembedError(ErrorKind.PORT_IN_USE, f"port {port} on {host} is already in use (another "
                                   "`ovembed serve`?); choose a free one with --port N (or OVEMBED_PORT)") from None
            raise usage(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sockets


def _settings(**flags):
    """Settings from the environment, overridden by the flags given; a bad value is an input error."""
    from pydantic import ValidationError

    from ovembed.config import Settings

    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise OvembedError(ErrorKind.VALIDATION, f"invalid setting: {first['loc'][0]}: {first['msg']}") from None
