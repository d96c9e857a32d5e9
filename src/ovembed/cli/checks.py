"""Commands that check models and deployments: `eval` (retrieval and STS quality) and `validate` (a service)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ovembed.cli.common import (
    DEFAULT_URL,
    EXIT_CHECK_FAILED,
    EXIT_OK,
    api_key_option,
    command_line,
    json_option,
    positive,
    print_json,
    service_url,
    url_option,
    usage,
)

EVAL_MODES = ("dense", "sparse", "colbert", "hybrid", "all")


@click.command("eval", short_help="retrieval (BEIR folders) and STS quality of models, side by side")
@click.option("--data", multiple=True, required=True,
              help="a BEIR folder (corpus/queries/qrels, .gz allowed) or an STS folder (pairs.tsv); repeatable")
@click.option("--model", "models", multiple=True, required=True,
              help="with --url: a model that service serves; without: a model folder or a service URL; repeatable")
@click.option("--mode", default="dense", show_default=True, type=click.Choice(EVAL_MODES),
              help="BGE-M3 output to score with; hybrid = M3's 0.4 dense + 0.2 sparse + 0.4 colbert")
@click.option("--cross-lingual", is_flag=True,
              help="also run each retrieval folder's queries against its siblings' corpora (xquad/de→en, ...)")
@click.option("--k", type=int, default=10, show_default=True, help="cut-off for nDCG, Recall and MRR")
@click.option("--report", "report_path", type=click.Path(path_type=Path),
              help="also write the table as a Markdown report to this file")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=Path.home() / ".cache" / "ovembed" / "eval",
              show_default=True, help="corpus embeddings cache (per model and content)")
@click.option("--no-cache", is_flag=True)
@url_option()
@api_key_option()
@json_option('print rows {"model","dataset","mode","ndcg@10","recall@10","recall@100","mrr@10"|"spearman"}')
def eval_(data, models, mode, cross_lingual, k, report_path, cache_dir, no_cache, url, api_key, as_json) -> None:
    """Score each --model on each --data folder, side by side."""
    from ovembed.quality import MODES, evaluate, report, table

    url = url if any(service_url(url, m) for m in models) else None  # folders beside OVEMBED_URL stay folders
    rows = evaluate(list(models), list(data), k=k, cache=None if no_cache else cache_dir, api_key=api_key,
                    modes=list(MODES) if mode == "all" else [mode], cross_lingual=cross_lingual, url=url)
    if report_path:
        report_path.write_text(report(rows, command_line()))
    click.echo(json.dumps(rows, ensure_ascii=False) if as_json else table(rows))


@click.command(short_help="check a running service: health, model, dimension, embeddings, latency")
@url_option(DEFAULT_URL, help="the service")
@click.option("--expect-model", metavar="ID", help="the default model must answer to this id or alias")
@click.option("--expect-dim", type=int, metavar="N", help="the default model's dimension must be N")
@click.option("--max-p95-ms", type=float, default=200.0, show_default=True, help="latency budget for one short query")
@click.option("--queries", type=int, default=50, show_default=True, help="sequential one-text queries to time")
@api_key_option()
@click.option("--timeout", type=float, default=10.0, show_default=True, help="seconds per request")
@click.option("--load-timeout", type=click.FloatRange(min=0), default=120.0, show_default=True,
              help="seconds to wait for a service still loading its model (at start-up, or on first use)")
@json_option("print the report as JSON instead of a table")
def validate(url, expect_model, expect_dim, max_p95_ms, queries, api_key, timeout, load_timeout, as_json) -> int:
    """Check a deployed service as the BGE-M3 upgrade guide does. Exit 0 when every check passes, 1 when one
    fails (including an unreachable service, or a model not loaded within --load-timeout), 2 for usage errors."""
    from ovembed.validate import validate as run_validate

    if not url.startswith(("http://", "https://")):
        raise usage(f"--url must start with http:// or https://, not {url!r}")
    for flag, value in (("--queries", queries), ("--max-p95-ms", max_p95_ms), ("--timeout", timeout),
                        ("--expect-dim", expect_dim)):
        positive(value, flag)
    report = run_validate(url.rstrip("/"), expect_model=expect_model, expect_dim=expect_dim, max_p95_ms=max_p95_ms,
                          queries=queries, api_key=api_key, timeout=timeout, load_timeout=load_timeout)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        print_json(report.as_json())
    else:
        click.echo(report.table())
    return EXIT_OK if report.passed else EXIT_CHECK_FAILED
