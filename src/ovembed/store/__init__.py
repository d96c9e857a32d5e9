"""Chunks and their vectors, per embedding space: SQLite (embedded default) or PostgreSQL + pgvector;
`open_store` picks the backend from the URL."""

from ovembed.store.base import Chunk, ChunkInput, Hit, Space, SpaceStatus, Store, VectorRow

__all__ = ["Chunk", "ChunkInput", "Hit", "Space", "SpaceStatus", "Store", "VectorRow", "open_store"]


def open_store(url: str) -> Store:
    """`postgresql://...` -> PostgreSQL + pgvector; anything else is a SQLite file path."""
    if url.startswith(("postgresql://", "postgres://")):
        from ovembed.store.postgres import PostgresStore

        return PostgresStore(url)
    from ovembed.store.sqlite import SQLiteStore

    return SQLiteStore(url)
