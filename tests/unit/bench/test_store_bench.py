"""`ovembed bench store` at tiny sizes: search on SQLite and embedded PostgreSQL (dense and sparse recall
against exact search, the searching process's memory and cold start, queries after writes, sizes, re-embedding
while ingesting), a kept store searched again, and the re-embedding job against the engine on real passages."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest


def run_store_bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovembed.cli", "bench", "store", *args], capture_output=True,
                          text=True, timeout=180, env={**os.environ, **(env or {})})


def tables(stdout: str) -> dict[str, dict[str, list[str]]]:
    """Each Markdown table of the report by the first word of the line above it, its rows by backend."""
    found: dict[str, dict[str, list[str]]] = {}
    title = ""
    for line in stdout.splitlines():
        if line.startswith("| backend"):
            found[title] = {}
        elif line.startswith("| "):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            found[title][cells[0]] = cells
        elif line and not line.startswith("|"):
            title = line.split()[0]
    return found


def check_dense_row(row: list[str], n: str, dim: str) -> float:
    backend, rows, dims, fill, cold, p50, p95, p99, recall, *_ = row
    assert (rows, dims) == (n, dim)
    assert float(fill) > 0 and float(cold) > 0
    assert 0 < float(p50) <= float(p95) <= float(p99)
    return float(recall)


def test_search_on_sqlite_is_exact(tmp_path):
    out = tmp_path / "search.json"
    proc = run_store_bench("search", "--n", "500", "--dim", "32", "--queries", "10", "--no-sparse", "--reembed-n", "0",
                           "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "| backend | n | dim | fill rows/s | cold first query ms | p50 ms | p95 ms | p99 ms | recall@10 |" in proc.stdout
    dense = tables(proc.stdout)["Dense"]
    assert list(dense) == ["sqlite (temp file)"]
    assert check_dense_row(dense["sqlite (temp file)"], "500", "32") == 1.0  # NumPy over every vector: exact
    assert "Sparse search" not in proc.stdout and "Re-embedding" not in proc.stdout
    report = json.loads(out.read_text())
    assert report["machine"]["cores"] and report["command"].startswith("ovembed bench store search")
    assert report["results"][0]["peak_rss_mb"] >= report["results"][0]["rss_mb"] > 0


@pytest.mark.slow  # 15-45 s each on 2 shared cores: an embedded server, five child processes, two writers
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_search_reports_every_figure(backend, tmp_path):
    """2000 x 64 with lexical weights: small enough that both stores search exactly (or nearly: HNSW's beam
    covers it), and every measurement is in the report."""
    out = tmp_path / "search.json"
    which = ["--backends", "sqlite"] if backend == "sqlite" else ["--postgres-embedded", "--pg-shared-buffers", "200MB"]
    proc = run_store_bench("search", *which, "--n", "2000", "--dim", "64", "--queries", "20", "--reembed-n", "500",
                           "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    label = {"sqlite": "sqlite (temp file)", "postgresql": "postgresql (embedded)"}[backend]
    report = tables(proc.stdout)
    assert list(report) == ["Dense", "Sparse", "Memory", "Queries", "Fill", "Sizes", "Re-embedding"]
    assert all(list(table) == [label] for table in report.values())
    assert check_dense_row(report["Dense"][label], "2000", "64") >= 0.9
    r = json.loads(out.read_text())["results"][0]
    for search in ("dense_search", "sparse_search"):
        assert 0.9 <= r[search]["recall"] <= 1 and 0 < r[search]["p50_ms"] <= r[search]["p95_ms"]
    assert r["sparse_search"]["cold_ms"] > 0
    assert 0 < r["cold_ms"] and r["open_ms"] <= r["cold_ms"]
    assert 0 < r["rss_before_open_mb"] <= r["rss_first_mb"] and r["peak_rss_end_mb"] >= r["peak_rss_mb"] >= r["rss_mb"]
    writes = r["writes"]
    assert writes["other_rows"] == 1000 and writes["other"]["first_ms"] > 0 and writes["other"]["p50_ms"] > 0
    assert writes["same_rows"] == 100 and writes["same"]["first_ms"] > 0 and writes["fresh_found"] == 1.0
    assert report["Queries"][label][2:4] == [str(writes["other_write_ms"]), str(writes["other"]["first_ms"])]
    assert r["fill"]["index_s"] >= 0 and r["fill"]["vector_rows_per_s"] > 0
    assert r["storage"]["total_mb"] > 0 and r["storage"]["parts"]
    reembed = r["reembed"]
    assert reembed["chunks"] == 500 and reembed["caught_up"]
    # The job embeds its backlog (the chunks filled, and those ingested alone before it) and what was ingested
    # while it ran, each once.
    assert reembed["backlog"] > 500 and reembed["job_written"] == reembed["backlog"] + reembed["ingested_during"]
    for rate in ("reembed_alone_rows_per_s", "ingest_alone_chunks_per_s", "reembed_during_rows_per_s",
                 "ingest_during_chunks_per_s"):
        assert reembed[rate] > 0, rate
    if backend == "postgresql":  # the server's memory, and the HNSW index beside the table
        assert r["server_pss_mb"] > 0 and float(report["Dense"][label][10]) == r["server_pss_mb"]
        assert any(name.startswith("index ") for name in r["storage"]["parts"])
        # The server restarted with the shared_buffers asked for, and the searched indexes were read into them.
        assert r["storage"]["shared_buffers"] == "200MB" and r["fill"]["prewarm"]["mb"] > 0


def test_a_kept_store_is_searched_again_without_filling(tmp_path):
    keep = tmp_path / "kept"
    args = ["search", "--n", "500", "--dim", "32", "--queries", "10", "--reembed-n", "0"]
    first = run_store_bench(*args, "--keep", str(keep), "--json", str(tmp_path / "first.json"))
    assert first.returncode == 0, first.stderr
    again = run_store_bench(*args, "--reuse", str(keep), "--json", str(tmp_path / "again.json"))
    assert again.returncode == 0, again.stderr
    assert "filling" not in again.stderr
    before, after = (json.loads((tmp_path / f"{name}.json").read_text())["results"][0] for name in ("first", "again"))
    assert after["fill"] == {**before["fill"], "reused": True, "reindex_s": after["fill"]["reindex_s"]}
    assert after["dense_search"]["recall"] == before["dense_search"]["recall"] == 1.0
    assert after["sparse_search"]["recall"] == before["sparse_search"]["recall"]
    assert after["storage"]["total_mb"] == pytest.approx(before["storage"]["total_mb"], abs=1)
    # The queries after a write to another space and to the searched one, and the fresh vectors found.
    assert after["writes"]["other"]["first_ms"] > 0 and after["writes"]["same"]["first_ms"] > 0
    assert after["writes"]["fresh_found"] == 1.0
    other = run_store_bench(*args[:-4], "--queries", "20", "--reembed-n", "0", "--reuse", str(keep))
    assert other.returncode == 2 and "give the same options" in other.stderr


@pytest.mark.slow  # an embedded server filled, then searched again
def test_a_kept_postgresql_store_searched_under_other_hnsw_settings_gets_that_graph(tmp_path):
    """A reuse measures the graph its settings ask for: the kept index is built again with them (before, it
    searched the kept graph while its report gave the new settings), and the report names the graph."""
    keep = tmp_path / "kept"
    args = ["search", "--postgres-embedded", "--pg-shared-buffers", "200MB", "--n", "1500", "--dim", "32",
            "--queries", "10", "--no-sparse", "--reembed-n", "0"]
    first = run_store_bench(*args, "--keep", str(keep), "--json", str(tmp_path / "first.json"))
    assert first.returncode == 0, first.stderr
    again = run_store_bench(*args, "--reuse", str(keep), "--json", str(tmp_path / "again.json"),
                            env={"OVEMBED_STORE_HNSW_M": "8", "OVEMBED_STORE_HNSW_EF_CONSTRUCTION": "20"})
    assert again.returncode == 0, again.stderr
    before, after = (json.loads((tmp_path / f"{name}.json").read_text())["results"][0] for name in ("first", "again"))
    (index,) = before["storage"]["hnsw"]
    assert before["storage"]["hnsw"] == {index: "m=16, ef_construction=64"}
    assert after["storage"]["hnsw"] == {index: "m=8, ef_construction=20"}
    assert after["fill"]["reused"] and after["fill"]["reindex_s"] > 0
    assert "index checked against the settings" in tables(again.stdout)["Fill"]["postgresql (embedded)"][8]
    assert f"{index}: m=8, ef_construction=20" in tables(again.stdout)["Sizes"]["postgresql (embedded)"][4]
    assert after["dense_search"]["recall"] >= 0.9


@pytest.mark.slow
def test_reembed_compares_the_job_with_the_engine(minilm_int8, shared_data, tmp_path):
    out = tmp_path / "reembed.json"
    proc = run_store_bench("reembed", "--model", str(minilm_int8), "--data", str(shared_data / "xquad/en/corpus.jsonl"),
                           "--limit", "40", "--repeat", "1", "--batch", "16", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^reembed = \d+% of the engine's batch throughput on the same texts \(target >= 85%: (met|NOT met)\)$",
                     proc.stdout, re.M)
    report = json.loads(out.read_text())
    assert report["documents"] == 40 and report["chunks"] >= 40
    assert report["reembed"]["written"] == report["chunks"] and report["reembed"]["reused"] == 0
    assert report["reembed_rows_per_s"] > 0 and report["engine_texts_per_s"] > 0 and report["ratio"] > 0
