"""Chunks and their vectors, per embedding space: SQLite (embedded default) or PostgreSQL + pgvector;
`open_store` picks the backend from the URL."""

from ovembed.config import StoreSettings
from ovembed.store.base import Chunk, ChunkInput, Hit, Space, SpaceStatus, Store, VectorRow

__all__ = ["Chunk", "ChunkInput", "Hit", "Space", "SpaceStatus", "Store", "VectorRow", "open_store"]


def open_store(url: str, create: bool = True, settings: StoreSettings | None = None) -> Store:
    """`postgresql://...` -> PostgreSQL + pgvector; anything else is a SQLite file path. With create=False a
    SQLite file that does not exist is an error (a typo must not read as an empty store): only `ingest` creates.
    `settings`: how the store indexes and searches (default: from the environment, OVEMBED_STORE_*)."""
    settings = settings or StoreSettings()
    if url.startswith(("postgresql://", "postgres://")):
        from ovembed.store.postgres import PostgresStore

        return PostgresStore(url, settings)
    from pathlib import Path

    from ovembed.store.sqlite import SQLiteStore

    if not create and not Path(url).expanduser().is_file():
        from ovembed.errors import validation

        raise validation(f"no store at {url}: `ovembed ingest` creates one (check --db / OVEMBED_DB)")
    return SQLiteStore(url, settings)
