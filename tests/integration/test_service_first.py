"""The deployment guide's workflow, service-first, through the CLI: one service serves MiniLM int8 (its default)
and a BGE-M3-layout model. Ingest through it, migrate to the BGE-M3 model through it while `search --url`
keeps answering from MiniLM, activate, search, roll back (search answers as before the migration), and the same
model reached through its folder finds nothing left to do. A space is its model, not the way it is reached."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cli_runner import run_cli
from ovembed.bench.common import LocalServer

QUERIES = ["Who was Genghis Khan?", "What is the capital of the Netherlands?", "How do plants make sugar?"]


@pytest.fixture(scope="module")
def two_models(minilm_int8, tiny_m3_fp32, tmp_path_factory):
    with LocalServer([minilm_int8, tiny_m3_fp32], log=tmp_path_factory.mktemp("logs") / "serve.log") as srv:
        yield srv


@pytest.fixture
def documents(shared_data, tmp_path):
    rows = [json.loads(line) for line in (shared_data / "xquad" / "en" / "corpus.jsonl").read_text().splitlines()]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": r["_id"], "text": r["text"]}) + "\n" for r in rows[:40]))
    return path


def _cli(*args, **kwargs):
    proc = run_cli(*args, **kwargs)
    assert proc.returncode == 0, proc.stderr
    return proc


def _search(db: str, *how: str, query: str = QUERIES[0]) -> list[tuple[str, str]]:
    rows = json.loads(_cli("search", query, "--db", db, "-k", "5", "--json", *how).stdout)
    return [(r["doc_id"], r["text"]) for r in rows]


def _spaces(db: str, *how: str) -> dict[str, dict]:
    return {s["name"]: s for s in json.loads(_cli("spaces", "list", "--db", db, "--json", *how).stdout)}


def test_migration_and_rollback_through_the_service(store_url, two_models, documents, tiny_m3_fp32, minilm_int8):
    url = two_models.url
    stats = json.loads(_cli("ingest", documents, "--db", store_url, "--url", url, "--json").stdout)
    assert stats["documents"] == 40
    spaces = _spaces(store_url, "--url", url)
    assert list(spaces) == ["minilm-int8"] and spaces["minilm-int8"]["served_as"] == "minilm-int8"
    before = {q: _search(store_url, "--url", url, query=q) for q in QUERIES}

    job = subprocess.Popen([sys.executable, "-m", "ovembed.cli", "reembed", "--to", "tiny-m3-fp32", "--url", url,
                            "--db", store_url, "--batch", "4", "--json"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    during = 0
    while job.poll() is None:  # searches keep answering from MiniLM, exactly as before, with no --model
        assert _search(store_url, "--url", url) == before[QUERIES[0]]
        during += 1
    out, err = job.communicate()
    assert job.returncode == 0, err
    reembedded = json.loads(out)
    assert reembedded["space"] == "tiny-m3-fp32" and reembedded["written"] == reembedded["chunks"] > 0
    assert during > 0

    _cli("spaces", "activate", "tiny-m3-fp32", "--db", store_url)
    after = _search(store_url, "--url", url)  # the served model whose fingerprint is the active space's
    assert after == _search(store_url, "--model", tiny_m3_fp32)  # ... and it is the model in that folder
    assert after != before[QUERIES[0]]

    _cli("spaces", "activate", "sentence-transformers/all-MiniLM-L6-v2", "--db", store_url)  # rollback by model id
    assert {q: _search(store_url, "--url", url, query=q) for q in QUERIES} == before

    # The BGE-M3 model again, now through its folder: the same space, already complete.
    again = json.loads(_cli("reembed", "--to", tiny_m3_fp32, "--db", store_url, "--json").stdout)
    assert again["space"] == "tiny-m3-fp32" and again["written"] == 0 and again["already"] == again["chunks"]
    assert json.loads(_cli("ingest", documents, "--db", store_url, "--model", minilm_int8, "--json").stdout)[
        "documents"] == 40
    spaces = _spaces(store_url)
    assert sorted(spaces) == ["minilm-int8", "tiny-m3-fp32"] and spaces["minilm-int8"]["active"]
    assert len({s["fingerprint"] for s in spaces.values()}) == 2 and all(s["fingerprint"] for s in spaces.values())


def test_search_without_model_or_url_uses_where_the_space_was_made(two_models, documents, tmp_path, minilm_int8):
    db = str(tmp_path / "s.db")
    _cli("ingest", documents, "--db", db, "--url", two_models.url)
    assert _search(db) == _search(db, "--url", two_models.url)  # the space's recorded service
    local = str(tmp_path / "l.db")
    _cli("ingest", documents, "--db", local, "--model", minilm_int8)
    assert _search(local) == _search(db)  # the space's recorded folder; the same model, the same answers


def test_a_space_whose_model_is_not_reachable_names_what_to_pass(documents, tmp_path, tiny_m3_source):
    from ovembed.convert.pipeline import run_quantize

    folder = tmp_path / "moved-away"
    run_quantize(str(tiny_m3_source), output=folder, precision="fp32")
    db = str(tmp_path / "s.db")
    _cli("ingest", documents, "--db", db, "--model", folder)
    folder.rename(tmp_path / "elsewhere")
    proc = run_cli("search", "x", "--db", db)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"filled from {folder}, which is not here" in proc.stderr and "pass --model DIR" in proc.stderr


def test_a_service_that_does_not_serve_the_active_space_says_so(documents, tmp_path, tiny_m3_fp32, minilm_int8):
    db = str(tmp_path / "s.db")
    _cli("ingest", documents, "--db", db, "--model", tiny_m3_fp32, "--space", "m3")
    with LocalServer([minilm_int8]) as only_minilm:
        proc = run_cli("search", "x", "--db", db, "--url", only_minilm.url)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "serves no model that makes space 'm3'" in proc.stderr and "it serves: minilm-int8" in proc.stderr
