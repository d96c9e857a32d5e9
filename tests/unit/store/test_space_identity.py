"""A space is the model that makes its vectors (id, precision, dimension, outputs, fingerprint of its files),
never the folder or URL it was reached through; stores written before fingerprints keep working."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from ovembed.embedders import LocalEmbedder
from ovembed.errors import OvembedError
from ovembed.rag import RAG, read_documents
from ovembed.store import Space, open_store

LEGACY = Path(__file__).resolve().parents[2] / "data" / "legacy"
M3 = Space("bge-m3-int8", "BAAI/bge-m3", "int8", 12, "/srv/models/bge-m3-int8", sparse=True, fingerprint="a" * 16)


@pytest.fixture
def store(store_url):
    with open_store(store_url) as s:
        yield s


def test_the_same_model_reached_another_way_fills_the_same_space(store):
    store.resolve_space(M3)
    via_service = replace(M3, name="bge-m3", model_ref="http://127.0.0.1:8019")
    assert store.resolve_space(via_service).name == M3.name
    assert [s.name for s in store.space_definitions()] == [M3.name]


def test_another_model_under_a_taken_name_is_refused_with_the_way_out(store):
    store.resolve_space(M3)
    requantized = replace(M3, model_ref="/elsewhere", fingerprint="b" * 16)
    # Matched by nothing else, it would take its own name, which is taken: refused, naming --space.
    with pytest.raises(OvembedError, match=r"another model .*fingerprint aaaa.*--space NEW_NAME"):
        store.resolve_space(requantized)
    assert store.resolve_space(requantized, name="bge-m3-v2").name == "bge-m3-v2"
    assert {s.name: s.fingerprint for s in store.space_definitions()} == {M3.name: "a" * 16, "bge-m3-v2": "b" * 16}
    # With two spaces of one model id, the fingerprint picks the right one.
    assert store.resolve_space(replace(requantized, name="x")).name == "bge-m3-v2"


def test_spaces_are_found_by_the_names_the_server_accepts(store):
    store.resolve_space(M3)
    for ref in ("bge-m3-int8", "BAAI/bge-m3", "bge-m3", "BAAI/bge-m3-base"):
        assert store.find_space(ref).name == M3.name
    with pytest.raises(OvembedError, match=r"no space named 'minilm' \(spaces: bge-m3-int8\)"):
        store.find_space("minilm")
    store.resolve_space(replace(M3, fingerprint="b" * 16), name="second")
    with pytest.raises(OvembedError, match="several spaces hold BAAI/bge-m3 .*name one"):
        store.find_space("bge-m3")


def _legacy_sqlite(tmp_path: Path) -> str:
    path = tmp_path / "legacy.db"
    with sqlite3.connect(path) as conn:
        conn.executescript((LEGACY / "store_v1.sqlite.sql").read_text())
    return str(path)


def _legacy_postgres(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute((LEGACY / "store_v1.postgres.sql").read_text())
        conn.execute("SELECT pg_catalog.set_config('search_path', 'public', false)")
    return url


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_store_written_before_fingerprints_keeps_working(backend, request, tmp_path, minilm_int8):
    """The legacy files are dumps of a store that ovembed 0.1 (commit 703d0e3) wrote: three documents ingested
    with a MiniLM int8 folder that no longer exists at its recorded path."""
    db = _legacy_sqlite(tmp_path) if backend == "sqlite" else _legacy_postgres(request.getfixturevalue("postgres_db"))
    with open_store(db) as store:
        [old] = store.space_definitions()
        assert (old.name, old.fingerprint, old.dimension) == ("minilm-int8", "", 384)
        rag = RAG(store, LocalEmbedder(minilm_int8))
        assert rag.search("Where is the Eiffel Tower?", k=1)[0].chunk.doc_id == "paris.txt"
        (tmp_path / "new.txt").write_text("Mount Fuji is the highest mountain in Japan.")
        rag.ingest(read_documents(str(tmp_path / "new.txt")))
        [space] = store.space_definitions()  # the same model from another folder: no second space
        assert space.name == "minilm-int8" and space.fingerprint == LocalEmbedder(minilm_int8).space.fingerprint
        assert store.space("minilm-int8").complete and store.count_chunks() == 4
        assert RAG(store, LocalEmbedder(minilm_int8)).search("highest mountain of Japan", k=1)[0].chunk.doc_id \
            == "new.txt"


def test_only_ingest_creates_a_sqlite_store(tmp_path):
    with pytest.raises(OvembedError, match=r"no store at .*typo\.db: `ovembed ingest` creates one"):
        open_store(str(tmp_path / "typo.db"), create=False)
    assert not (tmp_path / "typo.db").exists()
