"""The clients people plug in, against the live server (the real packages, no mocks): the openai SDK, LangChain's
OpenAIEmbeddings (with LangChain's own standard embeddings suite, defaults included: tiktoken's token ids) and
LlamaIndex's OpenAIEmbedding; and how /v1/embeddings reads token-id input under each `token_ids` setting."""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from langchain_openai import OpenAIEmbeddings
from langchain_tests.integration_tests import EmbeddingsIntegrationTests

from conftest import MINILM_ID
from ovembed.config import Settings
from ovembed.server import token_ids
from ovembed.server.app import create_app

# Texts whose cl100k_base tokens cut characters in pieces (umlauts, CJK, emoji, a ZWJ sequence): decoding must
# join the pieces' bytes before reading them as UTF-8.
TEXTS = ["first passage", "Grüße aus Berlin, zweiter Absatz", "第三段：東京の夜", "emoji 🙂 and 👩‍👩‍👧 family"]


def server_vectors(url: str, texts: list[str], model: str | None = MINILM_ID) -> np.ndarray:
    """What the service's own /embeddings route answers: the reference every client must reproduce."""
    body = {"texts": texts} | ({"model": model} if model else {})
    r = httpx.post(url + "/embeddings", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return np.array(r.json()["embeddings"])


@pytest.fixture(scope="module")
def tiktoken_offline(tmp_path_factory):
    """tiktoken downloads its encodings from OpenAI on first use, which fails offline (ConnectionError). Its cache
    is filled here with the same files from bpe-openai; tiktoken checks each against OpenAI's sha256 before use,
    so these are the genuine encodings."""
    cache = tmp_path_factory.mktemp("tiktoken")
    data = Path(importlib.util.find_spec("bpe_openai").submodule_search_locations[0]) / "data"
    for name in ("cl100k_base", "o200k_base"):
        url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
        key = hashlib.sha1(url.encode()).hexdigest()
        (cache / key).write_bytes(gzip.decompress((data / f"{name}.tiktoken.gz").read_bytes()))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        yield


# --- the openai SDK ----------------------------------------------------------------------------------------------


def test_openai_client_gets_the_same_vectors_as_embeddings(server):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    texts = ["first passage", "zweiter Absatz", "第三段"]
    legacy = server_vectors(server.url, texts)
    as_float = client.embeddings.create(model=MINILM_ID, input=texts, encoding_format="float")
    assert [d.index for d in as_float.data] == [0, 1, 2] and as_float.model == MINILM_ID
    np.testing.assert_allclose([d.embedding for d in as_float.data], legacy, atol=1e-6)
    as_b64 = client.embeddings.create(model=MINILM_ID, input=texts, encoding_format="base64")
    decoded = [np.frombuffer(base64.b64decode(d.embedding), "<f4") if isinstance(d.embedding, str) else d.embedding
               for d in as_b64.data]
    np.testing.assert_allclose(decoded, legacy, atol=1e-6)
    single = client.embeddings.create(model=MINILM_ID, input="first passage")
    np.testing.assert_allclose(single.data[0].embedding, legacy[0], atol=1e-6)
    assert single.usage.prompt_tokens > 0
    assert {m.id for m in client.models.list()} >= {MINILM_ID}


def test_cl100k_token_ids_embed_as_the_text_they_encode(server, tiktoken_offline):
    import tiktoken
    from openai import OpenAI

    encoding = tiktoken.get_encoding("cl100k_base")
    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    ids = [encoding.encode_ordinary(t) for t in TEXTS]
    assert any(len(encoding.decode_single_token_bytes(t)) < 2 for t in ids[3])  # bytes of a cut emoji
    got = client.embeddings.create(model=MINILM_ID, input=ids)
    np.testing.assert_allclose([d.embedding for d in got.data], server_vectors(server.url, TEXTS), atol=1e-6)
    by_text = client.embeddings.create(model=MINILM_ID, input=TEXTS)
    assert got.usage.prompt_tokens == by_text.usage.prompt_tokens  # counted in the model's own tokens
    one = client.embeddings.create(model=MINILM_ID, input=ids[1])  # a single list of ids is one input
    np.testing.assert_allclose(one.data[0].embedding, by_text.data[1].embedding, atol=1e-6)


@pytest.mark.parametrize(("ids", "named"), [
    ([[15339, 1917], [15339, 100261]], "input 1, position 1: 100261 is not a cl100k_base token id"),
    ([[15339, 100277]], "position 1: 100277 is not a cl100k_base token id"),
    ([-1, 15339], "input 0, position 0: -1 is not a cl100k_base token id"),
    ([[2**70]], f"{2**70} is not a cl100k_base token id"),
    ([[15339], "mixed"], "input"),
    ([True, False], "input"),
], ids=["unused id", "past the last id", "negative id", "huge id", "ids mixed with text", "booleans"])
def test_invalid_token_ids_get_a_400_naming_them(server, ids, named):
    r = httpx.post(server.url + "/v1/embeddings", json={"model": MINILM_ID, "input": ids}, timeout=60)
    assert r.status_code == 400, r.text
    assert named in r.json()["error"]["message"] and r.json()["error"]["type"] == "invalid_request_error"


def test_too_many_token_ids_are_413_before_decoding(server):
    r = httpx.post(server.url + "/v1/embeddings", json={"model": MINILM_ID, "input": [1] * 100_001}, timeout=60)
    assert r.status_code == 413 and "100001 token ids; the limit is 100000" in r.json()["error"]["message"]


# --- LangChain ---------------------------------------------------------------------------------------------------


class OnTheTestServer:
    """LangChain's standard suite builds the model from `embedding_model_params`; this points it at the session's
    server (MiniLM: 384 dimensions, where OpenAI's models have 1536 or more)."""

    extra_params: dict = {}

    @pytest.fixture(autouse=True)
    def _on_the_test_server(self, server, tiktoken_offline):
        self.base_url = server.url + "/v1"

    @property
    def embeddings_class(self) -> type[OpenAIEmbeddings]:
        return OpenAIEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": MINILM_ID, "base_url": self.base_url, "api_key": "unused", **self.extra_params}


# pytest-asyncio's strict mode runs a coroutine test only when marked, and LangChain's suite mixes both kinds.
STANDARD_SUITE = [pytest.mark.asyncio, pytest.mark.filterwarnings("ignore:.*marked with '@pytest.mark.asyncio' but")]


class TestLangChainStandardSuiteWithDefaults(OnTheTestServer, EmbeddingsIntegrationTests):
    """OpenAIEmbeddings' defaults: it sends tiktoken's cl100k_base ids, which the service decodes."""

    pytestmark = STANDARD_SUITE


class TestLangChainStandardSuiteWithText(OnTheTestServer, EmbeddingsIntegrationTests):
    """The documented setting that sends text (the only one that worked before token ids were read)."""

    pytestmark = STANDARD_SUITE
    extra_params = {"check_embedding_ctx_length": False}


@pytest.mark.parametrize("check_embedding_ctx_length", [True, False], ids=["token-ids", "text"])
def test_langchain_vectors_are_the_servers_own(server, tiktoken_offline, check_embedding_ctx_length):
    # The README's form; chunk_size: LangChain sends up to 1000 texts per request, the service takes 256.
    embeddings = OpenAIEmbeddings(model=MINILM_ID, base_url=server.url + "/v1", api_key="unused", chunk_size=256,
                                  check_embedding_ctx_length=check_embedding_ctx_length)
    expected = server_vectors(server.url, TEXTS)
    np.testing.assert_allclose(embeddings.embed_documents(TEXTS), expected, atol=1e-5)
    np.testing.assert_allclose(embeddings.embed_query(TEXTS[2]), expected[2], atol=1e-5)
    many = [f"document {i}: {TEXTS[i % 4]}" for i in range(300)]
    vectors = embeddings.embed_documents(many)
    assert len(vectors) == 300
    np.testing.assert_allclose(vectors[299], server_vectors(server.url, many[299:])[0], atol=1e-5)


# --- LlamaIndex --------------------------------------------------------------------------------------------------


def test_llamaindex_documented_form_reaches_the_service(server):
    from llama_index.embeddings.openai import OpenAIEmbedding

    # The README's form: model_name= and api_base= (model= refuses a name it does not know, base_url= is ignored).
    embed_model = OpenAIEmbedding(model_name=MINILM_ID, api_base=server.url + "/v1", api_key="unused")
    expected = server_vectors(server.url, TEXTS)
    np.testing.assert_allclose(embed_model.get_text_embedding_batch(TEXTS), expected, atol=1e-5)
    np.testing.assert_allclose(embed_model.get_query_embedding(TEXTS[1]), expected[1], atol=1e-5)


# --- the token_ids setting, on the app in-process (the tiny BGE-M3 layout) -----------------------------------------


@contextmanager
def app_client(model: Path, settings: Settings | None = None):
    settings = settings or Settings(models=[str(model)], preload=False)
    with TestClient(create_app(settings)) as client:
        yield client


def embed(client: TestClient, ids) -> httpx.Response:
    return client.post("/v1/embeddings", json={"input": ids})


def test_token_ids_refused_when_the_setting_says_so(tiny_m3_fp32):
    with app_client(tiny_m3_fp32, Settings(models=[str(tiny_m3_fp32)], preload=False, token_ids="refuse")) as client:
        r = embed(client, [[100, 200]])
        assert r.status_code == 400
        assert "OVEMBED_TOKEN_IDS=refuse" in r.json()["error"]["message"]
        assert "check_embedding_ctx_length=False" in r.json()["error"]["message"]
        assert embed(client, ["text is still served"]).status_code == 200


def test_model_setting_takes_the_models_own_ids_as_they_are(tiny_m3_fp32):
    with app_client(tiny_m3_fp32, Settings(models=[str(tiny_m3_fp32)], preload=False, token_ids="model")) as client:
        own = client.post("/tokenize", json={"texts": TEXTS}).json()["tokens"]
        r = embed(client, own)
        assert r.status_code == 200, r.text
        expected = client.post("/embeddings", json={"texts": TEXTS}).json()["embeddings"]
        np.testing.assert_allclose([d["embedding"] for d in r.json()["data"]], expected, atol=1e-5)
        assert r.json()["usage"]["prompt_tokens"] == sum(map(len, own))
        vocab = len(client.app.state.registry.default.model.table.rows)
        r = embed(client, [own[0], [0, vocab, 2]])
        assert r.status_code == 400 and f"input 1, position 1: {vocab} is not a token id" in r.text
        assert embed(client, [[0, -5, 2]]).status_code == 400
        assert "input 0 is empty" in embed(client, [[]]).text
        r = embed(client, [[0] + [5] * 600 + [2]])
        assert r.status_code == 413 and "takes at most 512" in r.json()["error"]["message"]


def test_o200k_setting_from_the_environment_reads_o200k_ids(tiny_m3_fp32, tiktoken_offline, monkeypatch):
    import tiktoken

    monkeypatch.setenv("OVEMBED_TOKEN_IDS", "o200k_base")
    settings = Settings(models=[str(tiny_m3_fp32)], preload=False)
    assert settings.token_ids == "o200k_base"
    o200k, cl100k = tiktoken.get_encoding("o200k_base"), tiktoken.get_encoding("cl100k_base")
    with app_client(tiny_m3_fp32, settings) as client:
        r = embed(client, [o200k.encode_ordinary(t) for t in TEXTS])
        assert r.status_code == 200, r.text
        expected = client.post("/embeddings", json={"texts": TEXTS}).json()["embeddings"]
        np.testing.assert_allclose([d["embedding"] for d in r.json()["data"]], expected, atol=1e-5)
        # cl100k ids read as o200k are another text: the setting is what decides.
        other = embed(client, [cl100k.encode_ordinary(TEXTS[1])]).json()["data"][0]["embedding"]
        assert not np.allclose(other, expected[1], atol=1e-4)


def test_without_the_openai_ids_extra_token_ids_get_the_400_with_guidance(tiny_m3_fp32, monkeypatch):
    # bpe-openai is installed in this venv: its absence is simulated (an import of it fails, nothing is cached).
    monkeypatch.setitem(sys.modules, "bpe_openai", None)
    monkeypatch.setattr(token_ids, "_tables", {})
    with app_client(tiny_m3_fp32) as client:
        r = embed(client, [[15339, 1917]])
        assert r.status_code == 400
        message = r.json()["error"]["message"]
        assert "pip install 'ovembed[openai-ids]'" in message and "check_embedding_ctx_length=False" in message
        assert embed(client, ["text is still served"]).status_code == 200
