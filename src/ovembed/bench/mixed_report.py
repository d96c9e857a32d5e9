"""`ovembed bench mixed`'s report: the ratios, the targets' verdicts and the text table (the load is in mixed.py)."""

from __future__ import annotations

from ovembed.bench.common import machine, markdown


def _ratio(over: float | None, under: float | None) -> float | None:
    return round(over / under, 3) if over is not None and under else None


def _target(value: float | None, limit: float, at_most: bool) -> dict:
    """A target's verdict; one that could not be measured (no queries answered, say) fails."""
    passed = value is not None and (value <= limit if at_most else value >= limit)
    return {"passed": passed, "value": value, "limit": limit, "at_most": at_most}


def mixed_report(opts, url: str, model: str, max_length: int, query_tokens: int, doc_lengths: list[int],
            rows: dict[str, dict], peak: float | None) -> dict:
    alone, docs, both = rows["queries_alone"], rows["documents_alone"], rows["both"]
    ratios = {f"query_{p}_under_load_over_p50_alone": _ratio(both[f"query_{p}_ms"], alone["query_p50_ms"])
              for p in ("p50", "p95", "p99")}
    ratios["doc_tokens_per_s_under_queries_over_alone"] = _ratio(both["doc_tokens_per_s"], docs["doc_tokens_per_s"])
    # Errors always count: a figure measured on failed requests is no figure.
    targets = {"errors": _target(sum(r["errors"] for r in rows.values()), 0, at_most=True)}
    if opts.max_query_p99_ms is not None:
        targets["query p99 under load (ms)"] = _target(both["query_p99_ms"], opts.max_query_p99_ms, at_most=True)
    if opts.max_query_p99_ratio is not None:
        targets["query p99 under load / p50 alone"] = _target(ratios["query_p99_under_load_over_p50_alone"],
                                                              opts.max_query_p99_ratio, at_most=True)
    if opts.min_doc_share is not None:
        targets["document tokens/s under queries / alone"] = _target(
            ratios["doc_tokens_per_s_under_queries_over_alone"], opts.min_doc_share, at_most=False)
    return {
        "url": url, "model": str(opts.model) if opts.model else None, "served_model": model, "max_length": max_length,
        "seconds": opts.seconds, "warmup_s": opts.warmup,
        "queries": {"clients": opts.query_clients, "tokens": query_tokens, "interval_ms": opts.query_interval_ms},
        "documents": {"clients": opts.doc_clients, "batch": opts.doc_batch, "tokens": doc_lengths},
        "server_env": opts.server_env, "phases": rows, "ratios": ratios,
        "server_peak_rss_mb": round(peak, 1) if peak else None,
        "targets": targets, "passed": all(t["passed"] for t in targets.values()), "machine": machine(),
    }


def _table_row(row: dict) -> list:
    return [row["phase"], row["window_s"], row["queries"],
            *(_cell(row[f"query_{k}_ms"]) for k in ("p50", "p95", "p99", "max")), row["doc_requests"],
            row["doc_texts"], _cell(row["doc_tokens_per_s"]), row["errors"], row["backpressure_503"],
            _cell(row["server_rss_max_mb"])]


def mixed_text(report: dict) -> str:
    """What a person reads: the phases as a table, the ratios, first errors, and the targets as PASS/FAIL lines."""
    q, d, r = report["queries"], report["documents"], report["ratios"]
    lines = [f"service: {report['url']}  model: {report['served_model']} (max length {report['max_length']})  "
             f"{report['seconds']:g} s per phase after a {report['warmup_s']:g} s warm-up",
             f"queries: {q['clients']} client(s), one ~{q['tokens']}-token text every {q['interval_ms']:g} ms each; "
             f"documents: {d['clients']} client(s) back to back, {d['batch']} texts of "
             f"{'/'.join(map(str, d['tokens']))} tokens per request", "",
             markdown(["phase", "window s", "queries", "p50 ms", "p95 ms", "p99 ms", "max ms", "doc requests",
                       "doc texts", "doc tokens/s", "errors", "503 backpressure", "server RSS max MB"],
                      [_table_row(row) for row in report["phases"].values()]), "",
             "query latency under load / p50 alone: " + ", ".join(
                 f"{p} {_times(r[f'query_{p}_under_load_over_p50_alone'])}" for p in ("p50", "p95", "p99")),
             f"document tokens/s under queries / alone: {_cell(r['doc_tokens_per_s_under_queries_over_alone'])}"]
    if report["server_peak_rss_mb"]:
        lines.append(f"server peak RSS (VmHWM) over the whole run: {report['server_peak_rss_mb']} MB")
    lines += [f"errors in {row['phase']}: first was {row['first_errors'][0]}" for row in report["phases"].values()
              if row["first_errors"]]
    lines.append("")
    lines += [f"{'PASS' if t['passed'] else 'FAIL'}  {name} {'<=' if t['at_most'] else '>='} {t['limit']:g}: "
              f"{t['value'] if t['value'] is not None else 'not measured'}" for name, t in report["targets"].items()]
    return "\n".join(lines)


def _cell(value) -> str:
    return "–" if value is None else str(value)


def _times(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"
