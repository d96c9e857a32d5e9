"""Commands that make, use and serve a model folder: `quantize`, `embed`, `serve`."""

from __future__ import annotations

import json
import signal
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
@json_option("print the manifest as JSON")
def quantize(model: str, model_id, output, precision, max_length, calibration, no_gate, min_cosine_mean,
             min_cosine_min, as_json) -> None:
    """Convert MODEL (a hub id or local folder, default BAAI/bge-m3) to OpenVINO (INT8 by default), verify it
    against fp32 PyTorch and write models/<name>-<precision>/ only if it passes the accuracy gate."""
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
        click.echo(json.dumps({"output": str(folder), "manifest": manifest.__dict__}, default=str))
        return
    click.echo(f"wrote {folder}  ({manifest.source}, {manifest.precision}, dim {manifest.dimension}, "
               f"max length {manifest.max_length}, outputs {'+'.join(manifest.outputs)})")
    for key, value in manifest.verification.items():
        if key != "gate":
            click.echo(f"  {key:28s} {value}")
    click.echo(f"  gate: {'passed' if not failures else 'FAILED (kept because of --no-gate): ' + '; '.join(failures)}")


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
    logs.configure(settings.log_level, settings.log_json)
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, log_config=None,
                            access_log=False, timeout_graceful_shutdown=settings.graceful_timeout_s,
                            log_level=settings.log_level, http=with_header_timeout(settings.header_timeout_s))
    server = uvicorn.Server(config)
    # Uvicorn drains on SIGTERM, then re-raises the signal once it has restored the previous handler;
    # with the default handler that kills the process (exit -15) after a clean shutdown. A no-op
    # handler makes a drained shutdown exit 0, as orchestrators expect.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run()
    return EXIT_OK if server.started else EXIT_CHECK_FAILED


def _settings(**flags):
    """Settings from the environment, overridden by the flags given; a bad value is an input error."""
    from pydantic import ValidationError

    from ovembed.config import Settings

    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise OvembedError(ErrorKind.VALIDATION, f"invalid setting: {first['loc'][0]}: {first['msg']}") from None
