"""Service settings: one object, read once at start-up from flags and env (OVEMBED_*), passed down.

The seed service's OPENVINO_PRELOAD_MODELS is honoured as well as OVEMBED_PRELOAD."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OVEMBED_", extra="ignore", populate_by_name=True)

    models: CommaList = Field(default_factory=lambda: ["models/bge-m3-int8"])
    default_model: str | None = None
    models_dir: str = "models"
    host: str = "127.0.0.1"
    port: int = Field(8019, ge=1, le=65535)
    preload: bool = Field(True, validation_alias=AliasChoices("OPENVINO_PRELOAD_MODELS", "OVEMBED_PRELOAD"))
    workers_infer: int | None = Field(None, ge=1, le=64)  # OpenVINO infer requests in flight per model
    # OpenVINO inference threads per lane (default: every core the process may use). In a container with a CPU
    # limit, set it to that limit: OpenVINO counts the node's cores, not the limit.
    threads: int | None = Field(None, ge=1, le=256)
    performance_hint: str = "LATENCY"
    api_keys: CommaList = Field(default_factory=list)
    max_texts: int = Field(256, ge=1)  # texts per request
    # Characters per text and per request (413 beyond), checked before tokenizing: its memory grows with the
    # characters (figures: docs/reliability.md#1-hostile-input).
    max_text_chars: int = Field(100_000, ge=1)
    max_request_chars: int = Field(1_000_000, ge=1)
    max_body_bytes: int = Field(16 * 2**20, ge=1024)
    # How /v1/embeddings reads token-id input (LangChain's OpenAIEmbeddings sends tiktoken's cl100k_base ids by
    # default): decoded from an OpenAI encoding and embedded as text, the served model's own ids, or refused.
    token_ids: Literal["cl100k_base", "o200k_base", "model", "refuse"] = "cl100k_base"
    max_queue_texts: int = Field(4096, ge=1)  # pending texts per model before 503 + Retry-After
    # Extra wait for companions before an engine call. 0: dispatch at once when idle, and merge whatever
    # queued while the engine was busy, so a lone query pays no wait and load still gets large batches.
    batch_wait_ms: float = Field(0.0, ge=0)
    batch_tokens: int = Field(16384, ge=64)  # token budget per inference batch
    # Scheduling (docs/reliability.md §6): a request of at most short_request_tokens tokens takes the short lane,
    # so it never waits behind documents (0: one first-come-first-served lane). lanes=2 compiles the model twice
    # so short work runs beside a long batch (more memory); lanes=1 shares one engine and the bulk lane steps
    # aside between its batches, for at most bulk_yield_ms each time.
    short_request_tokens: int = Field(512, ge=0)
    lanes: int = Field(2, ge=1, le=2)
    bulk_yield_ms: float = Field(250.0, ge=0)
    # An idle lane gives back the intermediate buffers a batch of more than this many padded tokens left behind
    # (OpenVINO keeps them sized for the largest call; figures: docs/reliability.md#5-memory-and-how-to-size-a-machine).
    release_tokens: int = Field(2048, ge=0)
    # Input shapes whose prepared kernels OpenVINO keeps; OpenVINO's own default (5000) let RSS grow under mixed lengths.
    shape_cache: int = Field(128, ge=0)
    # oneDNN kernels kept per process; its own default (1024) let RSS grow under mixed lengths
    # (figures: docs/reliability.md#the-kernel-cache).
    kernel_cache: int = Field(256, ge=0)
    # Hash every model file against ovembed.json at load (its cost: docs/reliability.md#3-faults).
    # Sizes are always checked.
    verify_checksums: bool = True
    cors_origins: CommaList = Field(default_factory=list)  # off unless set
    log_level: str = "info"
    log_json: bool = True
    graceful_timeout_s: float = Field(30.0, ge=0)
    # Slowloris bounds: a connection must send a request's headers within header_timeout_s (of connecting,
    # or of its previous response) and its whole body within body_timeout_s, else it is closed (408 for a body).
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(60.0, gt=0)

    @field_validator("models", "api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value):
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class StoreSettings(BaseSettings):
    """How a store indexes and searches (env OVEMBED_STORE_*), read once where a store is opened. Measured at
    1M x 1024 in docs/benchmarks.md (`ovembed bench store`): SQLite's defaults give recall@10 0.97; PostgreSQL's
    ef_search 100 gives 0.71 on the same vectors (1000, pgvector's cap, 0.90-0.93; 1500, past it, 0.97)."""

    model_config = SettingsConfigDict(env_prefix="OVEMBED_STORE_", extra="ignore")

    # --- both backends ------------------------------------------------------------------------------
    # Lexical search reads each query token's postings heaviest first, `sparse_page` at a time
    # (doubling), until no unread chunk can enter the top k, or `sparse_max_rows` were read; then at most
    # `sparse_shortlist` chunks that still could are re-scored exactly.
    sparse_page: int = Field(1000, ge=10)
    sparse_max_rows: int = Field(200_000, ge=100)
    sparse_shortlist: int = Field(1000, ge=10)
    # --- PostgreSQL + pgvector --------------------------------------------------------------------
    # The dense index: HNSW over `dense::halfvec` (half the size of `vector`, exact re-scoring from the stored
    # float32 vectors), or over its binary quantization (`bit`, ~1/20 of `vector`) with a re-ranked shortlist.
    pg_index: Literal["halfvec", "binary"] = "halfvec"
    hnsw_m: int = Field(16, ge=2, le=100)
    hnsw_ef_construction: int = Field(64, ge=4, le=1000)
    # Raised to 4 k for larger k. Past 1000 (pgvector's cap) the scan goes on iteratively to this many candidates.
    hnsw_ef_search: int = Field(100, ge=1, le=20_000)
    rerank_factor: int = Field(4, ge=1, le=100)  # binary index: candidates re-scored exactly per result
    # Index builds: maintenance_work_mem sized from the row count up to this cap, and parallel workers.
    index_memory_max_mb: int = Field(4096, ge=64)
    index_workers: int = Field(2, ge=0, le=64)
    pool_min: int = Field(1, ge=0)
    pool_max: int = Field(8, ge=1)
    # --- SQLite ------------------------------------------------------------------------------------
    # Dense search past ann_min_vectors vectors per space: a usearch HNSW index file per space beside the
    # database (memory-mapped, shared by every process), candidates re-scored exactly from the stored vectors.
    ann: Literal["auto", "exact"] = "auto"
    ann_min_vectors: int = Field(20_000, ge=0)
    ann_dtype: Literal["i8", "f16", "f32"] = "i8"
    ann_connectivity: int = Field(16, ge=2, le=128)
    ann_expansion_add: int = Field(128, ge=8)
    # The search beam. At 1M x 1024 (docs/benchmarks.md): on vectors graded like real embeddings' 512 gave
    # recall@10 0.79, 2048 0.95, 4096 0.97 (p50 16 ms); on flat topic clusters 512 gave 0.97.
    ann_expansion_search: int = Field(4096, ge=8)
    ann_candidates: int = Field(10, ge=1)  # candidates re-scored per result wanted
    # Vectors written after the index file was built are searched exactly in memory; past this many the index
    # is rebuilt (once, by whichever process notices first).
    ann_delta_max: int = Field(50_000, ge=100)
    # SQLite is tested up to this many chunks; past it ingest warns and points to PostgreSQL.
    sqlite_tested_chunks: int = Field(2_000_000, ge=1)
