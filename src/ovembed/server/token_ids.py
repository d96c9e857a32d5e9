"""Token-id input of /v1/embeddings, read as the `token_ids` setting says: ids of an OpenAI encoding (what
LangChain's OpenAIEmbeddings sends by default) decoded back to text and embedded by the model's own tokenizer,
the served model's own ids, or refused."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import importlib.util
import threading
from pathlib import Path

from ovembed.config import Settings
from ovembed.engine import Embeddings
from ovembed.errors import ErrorKind, OvembedError, validation
from ovembed.server.inference import check_sizes, embed, embed_tokens
from ovembed.server.registry import ModelEntry, ModelRegistry

# The encodings' files as OpenAI publishes them (the sha256 tiktoken checks) and their special tokens. The
# optional extra `openai-ids` installs bpe-openai, which ships these files: read directly, they decode in a
# table of ~17 MB built in ~0.3 s, where importing bpe-openai itself loads three encodings (~100 MB, ~1.7 s).
OPENAI_ENCODINGS = {
    "cl100k_base": ("223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
                    {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
                     "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276}),
    "o200k_base": ("446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
                   {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}),
}
SEND_TEXT = "send text instead (LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False))"

_tables: dict[str, list[bytes | None]] = {}  # encoding name -> bytes of each id (None: no such id)
_loading = threading.Lock()


def token_id_lists(value: str | list) -> list[list[int]] | None:
    """The token-id sequences of an `input` (one list of ints, or a list of them); None when it is text."""
    if isinstance(value, str) or not value or isinstance(value[0], str):
        return None
    return [value] if isinstance(value[0], int) else value


async def embed_token_ids(registry: ModelRegistry, settings: Settings, entry: ModelEntry,
                          sequences: list[list[int]]) -> Embeddings:
    """Dense, normalized vectors of token-id input, or an OvembedError naming what is wrong with it."""
    # Ids are counted as characters (a text has about as many, usually more): a million ids are refused undecoded.
    check_sizes(sequences, settings, what="input", unit="token ids")
    mode = settings.token_ids
    if mode == "refuse":
        raise validation(f"input must be text: token-id arrays are not accepted here (OVEMBED_TOKEN_IDS=refuse); "
                         f"{SEND_TEXT}")
    if mode == "model":
        entry = await registry.ready(entry)
        _check_own_ids(sequences, entry)
        return await embed_tokens(registry, entry, sequences, ["dense"], normalize=True)
    texts = await asyncio.to_thread(decode, sequences, mode)  # the first call also reads the encoding (~0.3 s)
    return await embed(registry, settings, entry, texts, ["dense"], normalize=True, truncate=True)


def decode(sequences: list[list[int]], encoding: str) -> list[str]:
    """The text each sequence of `encoding` ids stands for (bytes cut inside a character become U+FFFD)."""
    table = _table(encoding)
    texts = []
    for i, ids in enumerate(sequences):
        bad = next((j for j, t in enumerate(ids) if not 0 <= t < len(table) or table[t] is None), None)
        if bad is not None:
            raise validation(f"input {i}, position {bad}: {ids[bad]} is not a {encoding} token id (ids 0-"
                             f"{len(table) - 1}, some unused; OVEMBED_TOKEN_IDS={encoding} reads ids as {encoding})")
        texts.append(b"".join([table[t] for t in ids]).decode("utf-8", errors="replace"))
    return texts


def _table(encoding: str) -> list[bytes | None]:
    with _loading:  # concurrent first requests read the file once
        if encoding not in _tables:
            _tables[encoding] = _read_table(encoding)
        return _tables[encoding]


def _read_table(encoding: str) -> list[bytes | None]:
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise validation(f"token-id input is read as {encoding} ids (OVEMBED_TOKEN_IDS), which needs the optional "
                         f"extra: pip install 'ovembed[openai-ids]'; or {SEND_TEXT}")
    path = Path(spec.submodule_search_locations[0]) / "data" / f"{encoding}.tiktoken.gz"
    expected, special = OPENAI_ENCODINGS[encoding]
    try:
        data = gzip.decompress(path.read_bytes())
    except OSError as exc:
        raise validation(f"cannot read {encoding} from the bpe-openai package ({exc}); reinstall "
                         f"'ovembed[openai-ids]', or {SEND_TEXT}") from None
    if hashlib.sha256(data).hexdigest() != expected:
        raise validation(f"{path} is not OpenAI's {encoding} (sha256 differs); reinstall 'ovembed[openai-ids]', "
                         f"or {SEND_TEXT}")
    ranks = {int(rank): base64.b64decode(token) for token, rank in (line.split() for line in data.splitlines())}
    ranks.update({rank: token.encode() for token, rank in special.items()})
    return [ranks.get(i) for i in range(max(ranks) + 1)]


def _check_own_ids(sequences: list[list[int]], entry: ModelEntry) -> None:
    """The served model's own ids (as /tokenize returns them, special tokens included) must index its vocabulary
    and fit its max length: they are fed to the model as they are."""
    vocab, longest = entry.model.table.vocab_size, entry.manifest.max_length
    for i, ids in enumerate(sequences):
        if not ids:
            raise validation(f"input {i} is empty: send at least one token id")
        if len(ids) > longest:
            raise OvembedError(ErrorKind.INPUT_TOO_LONG, f"input {i} has {len(ids)} token ids; {entry.model_id} "
                               f"takes at most {longest}: shorten it")
        bad = next((j for j, t in enumerate(ids) if not 0 <= t < vocab), None)
        if bad is not None:
            raise validation(f"input {i}, position {bad}: {ids[bad]} is not a token id of {entry.model_id} (ids "
                             f"0-{vocab - 1}; OVEMBED_TOKEN_IDS=model reads ids as the model's own)")
