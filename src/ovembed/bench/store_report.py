"""The store benchmark's report for people: a Markdown table per measurement (dense search, sparse search,
memory and cold start, queries after writes, fill and index build, sizes, re-embedding under ingest)."""

from __future__ import annotations

from ovembed.bench.common import markdown
from ovembed.bench.store_fill import WARMUP_QUERIES
from ovembed.bench.store_probe import AFTER_QUERIES, FRESH_CHUNKS, OTHER_ROWS


def _share(part: float, whole: float) -> str:
    return f"{part} ({100 * part / whole:.0f}%)" if whole else str(part)


def _dense(rows: list[dict], k: int) -> str:
    table = [[r["backend"], r["n"], r["dim"], f"{r['fill']['fill_rows_per_s']:.0f}", r["cold_ms"], d["p50_ms"],
              d["p95_ms"], d["p99_ms"], d["recall"], f"{r['rss_mb']} ({r['peak_rss_mb']})", r.get("server_pss_mb", "–"),
              r["storage"]["total_mb"]] for r, d in ((r, r["dense_search"]) for r in rows)]
    return markdown(["backend", "n", "dim", "fill rows/s", "cold first query ms", "p50 ms", "p95 ms", "p99 ms",
                     f"recall@{k}", "RSS MB (peak)", "server PSS MB", "storage MB"], table)


def _sparse(rows: list[dict], k: int) -> str:
    table = [[r["backend"], r["n"], s["cold_ms"], s["p50_ms"], s["p95_ms"], s["p99_ms"], s["recall"]]
             for r in rows if (s := r.get("sparse_search"))]
    return markdown(["backend", "n", "first query ms", "p50 ms", "p95 ms", "p99 ms", f"recall@{k}"], table)


def _memory(rows: list[dict]) -> str:
    table = [[r["backend"], r["open_ms"], r["cold_ms"], r["rss_before_open_mb"], r["rss_first_mb"],
              f"{r['rss_mb']} ({r['anon_mb']})", r["peak_rss_mb"], r["peak_rss_end_mb"], r.get("server_pss_mb", "–")]
             for r in rows]
    return markdown(["backend", "open ms", "open → first answer ms", "RSS before open MB", "RSS after 1st query MB",
                     "RSS after all queries MB (anon)", "peak RSS MB", "peak RSS with writes MB", "server PSS MB"], table)


def _writes(rows: list[dict]) -> str:
    table = []
    for r in rows:
        w = r["writes"]
        table.append([r["backend"], r["dense_search"]["p50_ms"], w["other_write_ms"], w["other"]["first_ms"],
                      w["other"]["p50_ms"], w["same_write_ms"], w["same"]["first_ms"], w["same"]["p50_ms"],
                      w["fresh_found"]])
    return markdown(["backend", "warm p50 ms", f"{OTHER_ROWS} rows to another space: write ms", "next query ms",
                     "p50 after ms", f"{FRESH_CHUNKS} chunks to this space: write ms", "next query ms", "p50 after ms",
                     "new vectors found"], table)


def _fill(rows: list[dict]) -> str:
    table = [[r["backend"], r["n"], f["chunks_s"], f["vectors_s"], f"{f['vector_rows_per_s']:.0f}", f["index_s"],
              f"{f['fill_rows_per_s']:.0f}", f.get("fill_peak_rss_mb", "–"), _filled(f),
              _prewarm(f.get("prewarm"))]
             for r, f in ((r, r["fill"]) for r in rows)]
    return markdown(["backend", "n", "chunks s", "vectors s", "vector rows/s", "activate (index build) s",
                     "fill rows/s (all)", "filler peak RSS MB", "filled", "indexes prewarmed"], table)


def _filled(fill: dict) -> str:
    return f"kept (index checked against the settings: {fill['reindex_s']} s)" if fill.get("reused") else "this run"


def _prewarm(done: dict | None) -> str:
    if done is None:
        return "–"
    return f"error: {done['error']}" if "error" in done else f"{done['mb']} MB in {done['s']} s"


def _sizes(rows: list[dict]) -> str:
    table = [[r["backend"], r["storage"]["total_mb"],
              ", ".join(f"{name} {mb}" for name, mb in r["storage"]["parts"].items()) or "–",
              r["storage"].get("shared_buffers", "–"),
              "; ".join(f"{name}: {options}" for name, options in r["storage"].get("hnsw", {}).items()) or "–"]
             for r in rows]
    return markdown(["backend", "total MB", "parts MB", "shared_buffers", "HNSW graph"], table)


def _reembed(rows: list[dict]) -> str:
    table = []
    for r in rows:
        e = r.get("reembed")
        if not e:
            continue
        if "error" in e:
            table.append([r["backend"], f"error: {e['error']}"])
            continue
        table.append([r["backend"], e["backlog"], e["reembed_alone_rows_per_s"], e["ingest_alone_chunks_per_s"],
                      _share(e["reembed_during_rows_per_s"], e["reembed_alone_rows_per_s"]),
                      _share(e["ingest_during_chunks_per_s"], e["ingest_alone_chunks_per_s"]), e["overlap_s"],
                      "yes" if e["caught_up"] else "NO"])
    return markdown(["backend", "job backlog", "reembed alone rows/s", "ingest alone chunks/s",
                     "reembed during ingest rows/s", "ingest during reembed chunks/s", "overlap s", "job caught up"], table)


CORPUS_TEXT = {"graded": "neighbourhoods graded like real embeddings' (store_data.graded_corpus_vectors)",
               "clusters": "around 500 topic centres"}


def search_text(report: dict) -> str:
    """The tables, each under a line saying what it measures."""
    rows = report["results"]
    ok = [r for r in rows if "error" not in r]
    first = rows[0]
    n, dim, k, queries = first["n"], first["dim"], first["k"], first["queries"]
    lexical = " with BGE-M3-like lexical weights" if first["sparse"] else ""
    lines = [f"machine: {report['machine']}", f"command: {report['command']}",
             f"{n} unit vectors of {dim} dims, {CORPUS_TEXT[first.get('corpus', 'clusters')]}{lexical}; "
             f"{queries} queries near stored chunks after {WARMUP_QUERIES} warm-up ones; recall@{k} against exact "
             "search. Searched in a child process that only opens the store and searches (RSS is the store's, no "
             "copy of the corpus; the OS page cache is warm from the fill).",
             *[f"{r['backend']}: error: {r['error']}" for r in rows if "error" in r]]
    if not ok:
        return "\n".join(lines)
    lines += ["", "Dense search (cold first query: from open_store to the first answer)", _dense(ok, k)]
    if any("sparse_search" in r for r in ok):
        lines += ["", "Sparse search (lexical: sum of weight products over shared tokens)", _sparse(ok, k)]
    lines += ["", "Memory and cold start of the searching process", _memory(ok),
              "", f"Queries after writes from a second connection (first query, then p50 of the next "
              f"{AFTER_QUERIES - 1}); new vectors found: each of {AFTER_QUERIES} fresh vectors in its own top-{k}",
              _writes(ok), "", "Fill and index build", _fill(ok), "", "Sizes on disk", _sizes(ok)]
    done = [r["reembed"] for r in ok if "doc_chunks" in r.get("reembed", {})]
    if any("reembed" in r for r in ok):
        lines += ["", f"Re-embedding while ingesting ({report['reembed_n']} chunks, a store of its own; a stand-in "
                  "model making seeded vectors, so this is the store and the job's pipeline, not the engine; ingest: "
                  f"documents of {done[0]['doc_chunks'] if done else '?'} chunks with their vectors, from another "
                  "process)", _reembed(ok)]
    return "\n".join(lines)
