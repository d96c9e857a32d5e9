"""`ovembed bench store` at tiny sizes: search on SQLite and embedded PostgreSQL (recall of
HNSW against exact search), and the re-embedding job against the engine on real passages."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest


def run_store_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovembed.cli", "bench", "store", *args], capture_output=True,
                          text=True, timeout=180)


def search_rows(stdout: str) -> dict[str, list[str]]:
    lines = [line for line in stdout.splitlines() if line.startswith("| ") and not line.startswith("| backend")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return {row[0]: row for row in cells}


def check_search_row(row: list[str]) -> float:
    backend, n, dim, fill, cold, p50, p95, p99, recall, *_ = row
    assert (n, dim) == ("500", "32")
    assert float(fill) > 0 and float(cold) > 0
    assert 0 < float(p50) <= float(p95) <= float(p99)
    return float(recall)


def test_search_on_sqlite_is_exact(tmp_path):
    out = tmp_path / "search.json"
    proc = run_store_bench("search", "--n", "500", "--dim", "32", "--queries", "10", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "| backend | n | dim | fill rows/s | cold first query ms | p50 ms | p95 ms | p99 ms | recall@10 |" in proc.stdout
    rows = search_rows(proc.stdout)
    assert list(rows) == ["sqlite (temp file)"]
    assert check_search_row(rows["sqlite (temp file)"]) == 1.0  # NumPy over every vector: exact
    report = json.loads(out.read_text())
    assert report["machine"]["cores"] and report["command"].startswith("ovembed bench store search")
    assert report["results"][0]["peak_rss_mb"] >= report["results"][0]["rss_mb"] > 0


def test_search_on_embedded_postgres_reports_hnsw_recall():
    proc = run_store_bench("search", "--postgres-embedded", "--n", "500", "--dim", "32", "--queries", "10")
    assert proc.returncode == 0, proc.stderr
    rows = search_rows(proc.stdout)
    assert list(rows) == ["postgresql (embedded)"]
    assert check_search_row(rows["postgresql (embedded)"]) >= 0.9
    assert float(rows["postgresql (embedded)"][10]) > 0  # the server's memory is measured too


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
