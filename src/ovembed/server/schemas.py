"""Request and response shapes of every route (routes live in routes/)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt


def _encodable(text: str) -> str:
    # JSON may carry lone UTF-16 surrogates ("\\ud800"): valid JSON, but not text a tokenizer can take.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text is not valid Unicode: a lone surrogate at character {exc.start}") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class EmbeddingsRequest(_Request):
    """POST /embeddings — the legacy contract."""

    texts: list[Text] = Field(min_length=1)
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
    """POST /v1/embeddings — OpenAI's shape. Token-id input (one list of ints, or a list of them) is read as the
    `token_ids` setting says (server/token_ids.py)."""

    model_config = ConfigDict(extra="ignore")

    input: Text | list[Text] | list[StrictInt] | list[list[StrictInt]]  # strict: true or 1.0 is no token id
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

    inputs: Text | list[Text]
    truncate: bool = True
    model: str | None = None


class SparseValue(BaseModel):
    index: int
    value: float


class RerankWeights(_Request):
    # Relative weights: finite and bounded, so their sum (the combined score's divisor) stays finite.
    dense: float = Field(0.4, ge=0, le=1e6, allow_inf_nan=False)
    sparse: float = Field(0.2, ge=0, le=1e6, allow_inf_nan=False)
    colbert: float = Field(0.4, ge=0, le=1e6, allow_inf_nan=False)


class RerankRequest(_Request):
    query: Text
    texts: list[Text] = Field(min_length=1)
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
    texts: list[Text] = Field(min_length=1)
    model: str | None = None
    truncate: bool = True
    return_offsets: bool = False  # character spans of the tokens, special tokens excluded, never truncated


class TokenizeResponse(BaseModel):
    model: str
    max_length: int
    tokens: list[list[int]]
    counts: list[int]
    truncated: list[bool]
    # [start, end) character spans; a list of two, as tuple[int, int] gives an OpenAPI schema tools reject.
    offsets: list[list[Annotated[list[int], Field(min_length=2, max_length=2)]]] | None = None


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
    fingerprint: str | None = None  # the model files' checksums: the same model reached another way matches
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


class Error(BaseModel):
    """Every error outside /v1: a kind (see ovembed.errors.ErrorKind) and a message naming the problem."""

    error: str
    detail: str


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """Every error under /v1, in OpenAI's shape."""

    error: OpenAIErrorDetail


# Declared on every route, so the OpenAPI document describes the errors actually sent.
ERRORS: dict = {"4XX": {"model": Error, "description": "Client error"},
                "5XX": {"model": Error, "description": "Unavailable, overloaded or failed"}}
OPENAI_ERRORS: dict = {"4XX": {"model": OpenAIError, "description": "Client error"},
                       "5XX": {"model": OpenAIError, "description": "Unavailable, overloaded or failed"}}
