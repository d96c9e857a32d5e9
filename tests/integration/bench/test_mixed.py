"""`ovembed bench mixed` against a real `ovembed serve` of MiniLM int8: a short run of its three phases (queries
alone, documents alone, both), the ratios taken from the phases' own figures, the targets and the exit code; and
bad command lines refused with a message."""

from __future__ import annotations

import json
import re

import pytest

from cli_runner import run_cli


@pytest.mark.slow
def test_short_mixed_run_counts_every_phase_and_takes_its_ratios_from_them(minilm_int8, tmp_path):
    out = tmp_path / "mixed.json"
    # A p99 target no service meets: the run must say FAIL and exit 1.
    proc = run_cli("bench", "mixed", "--model", minilm_int8, "--seconds", "2", "--warmup", "1", "--doc-clients", "2",
                   "--doc-batch", "4", "--doc-tokens", "64,300", "--max-query-p99-ms", "0.001",
                   "--log", tmp_path / "server.log", "--json", out)
    print(proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    report = json.loads(out.read_text())
    alone, docs, both = (report["phases"][p] for p in ("queries_alone", "documents_alone", "both"))

    assert alone["queries"] > 0 and both["queries"] > 0 and docs["queries"] == 0
    assert docs["doc_requests"] > 0 and both["doc_requests"] > 0 and alone["doc_requests"] == 0
    assert [p["errors"] for p in (alone, docs, both)] == [0, 0, 0], [p["first_errors"] for p in (alone, docs, both)]
    # Sized with the service's /tokenize: ~16-token queries; 300 is cut to MiniLM's 256, and each request's texts
    # alternate 64 and 256 tokens.
    assert report["max_length"] == 256 and report["documents"]["tokens"] == [64, 256]
    assert 12 <= alone["query_mean_tokens"] <= 16
    assert docs["doc_texts"] == 4 * docs["doc_requests"]
    assert 0.8 * 160 <= docs["doc_tokens"] / docs["doc_texts"] <= 160
    assert docs["doc_tokens_per_s"] == pytest.approx(docs["doc_tokens"] / docs["window_s"], rel=0.01)
    assert 0 < both["query_p50_ms"] <= both["query_p95_ms"] <= both["query_p99_ms"] <= both["query_max_ms"]
    assert all(p["server_rss_max_mb"] > 0 for p in (alone, docs, both))

    ratios = report["ratios"]
    assert ratios["query_p99_under_load_over_p50_alone"] == round(both["query_p99_ms"] / alone["query_p50_ms"], 3)
    assert ratios["doc_tokens_per_s_under_queries_over_alone"] == round(
        both["doc_tokens_per_s"] / docs["doc_tokens_per_s"], 3)

    targets = report["targets"]
    assert targets["errors"] == {"passed": True, "value": 0, "limit": 0, "at_most": True}
    assert targets["query p99 under load (ms)"]["passed"] is False
    share = targets["document tokens/s under queries / alone"]
    assert share["limit"] == 0.75 and share["passed"] == (ratios["doc_tokens_per_s_under_queries_over_alone"] >= 0.75)
    assert report["passed"] is False and proc.returncode == 1
    assert re.search(r"^FAIL  query p99 under load \(ms\) <= 0.001: [\d.]+$", proc.stdout, re.M)
    assert re.search(r"^query latency under load / p50 alone: p50 [\d.]+x, p95 [\d.]+x, p99 [\d.]+x$", proc.stdout, re.M)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "phase" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["queries alone", "documents alone", "both at once"]
    assert report["machine"]["cores"] >= 1 and report["command"].startswith("ovembed bench mixed --model")


def test_bad_mixed_command_lines_get_a_clear_message_and_no_traceback(tmp_path):
    cases = [
        (["--model", tmp_path, "--doc-tokens", "0"], "expected positive integers"),
        (["--model", tmp_path, "--query-interval-ms", "-1"], "--query-interval-ms must be 0 or more"),
        (["--model", tmp_path, "--url", "http://127.0.0.1:9"], "--url and --model exclude each other"),
        ([], "give --url (a running service) or --model"),
        (["--model", tmp_path, "--query-tokens", "4"], "at least 8"),
        (["--model", tmp_path, "--seconds", "0"], "--seconds must be positive"),
        (["--url", "http://127.0.0.1:9", "--server-env", "A=1"], "--server-env and --log go with --model"),
        (["--model", tmp_path], "not a model folder"),
        (["--url", "http://127.0.0.1:9"], "is not 200"),  # nothing listens there
    ]
    for args, message in cases:
        proc = run_cli("bench", "mixed", *args, env={"OVEMBED_URL": None})
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr, (args, proc.stderr)
