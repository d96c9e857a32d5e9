"""Request and response shapes of every route (routes live in app.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class EmbeddingsRequest(_Request):
    """POST /embeddings — the legacy contract."""

    texts: list[str] = Field(min_length=1)
    normalize: bool = True
    model: str | None = None
    return_sparse: bool = False
    return_colbert: bool = False
    truncate: bool = True


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class SparseEmbedding(BaseModel):
    indices: list[int]
    values: list[float]


class EmbeddingsResponse(BaseModel):
    model: str
    dimension: int
    embeddings: list[list[float]]
    sparse: list[SparseEmbedding] | None = None
    colbert: list[list[list[float]]] | None = None
    usage: Usage


class OpenAIEmbeddingRequest(BaseModel):
    """POST /v1/embeddings — OpenAI's shape. Token-id inputs are refused with a clear message."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: Usage


class SparseRequest(_Request):
    """POST /embed_sparse — TEI's shape."""

    inputs: str | list[str]
    truncate: bool = True
    model: str | None = None


class SparseValue(BaseModel):
    index: int
    value: float


class RerankWeights(_Request):
    dense: float = Field(0.4, ge=0)
    sparse: float = Field(0.2, ge=0)
    colbert: float = Field(0.4, ge=0)


class RerankRequest(_Request):
    query: str
    texts: list[str] = Field(min_length=1)
    weights: RerankWeights | None = None
    top_n: int | None = Field(None, ge=1)
    model: str | None = None
    truncate: bool = True
    return_text: bool = False


class RerankResult(BaseModel):
    index: int
    score: float
    scores: dict[str, float]
    text: str | None = None


class RerankResponse(BaseModel):
    model: str
    results: list[RerankResult]
    usage: Usage


class TokenizeRequest(_Request):
    texts: list[str] = Field(min_length=1)
    model: str | None = None
    truncate: bool = True
    return_offsets: bool = False  # character spans of the tokens, special tokens excluded, never truncated


class TokenizeResponse(BaseModel):
    model: str
    max_length: int
    tokens: list[list[int]]
    counts: list[int]
    truncated: list[bool]
    offsets: list[list[tuple[int, int]]] | None = None


class ModelInfo(BaseModel):
    name: str
    id: str
    aliases: list[str]
    state: str
    loaded: bool
    dimension: int | None
    precision: str | None
    max_length: int | None
    outputs: list[str]
    load_seconds: float | None
    error: str | None = None


class ModelsStatus(BaseModel):
    embedding_model: str
    embedding_dimension: int | None
    embedding_loaded: bool
    precision: str | None
    max_length: int | None
    outputs: list[str]
    models: list[ModelInfo]


class Health(BaseModel):
    status: Literal["ok", "loading", "error"]
    detail: str | None = None
    models: dict[str, str]
