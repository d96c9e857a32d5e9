"""Chunks and their vectors, per embedding space: SQLite (embedded default) or PostgreSQL + pgvector."""

from ovembed.store.base import Chunk, ChunkInput, Hit, Space, SpaceStatus, Store, VectorRow, open_store

__all__ = ["Chunk", "ChunkInput", "Hit", "Space", "SpaceStatus", "Store", "VectorRow", "open_store"]
