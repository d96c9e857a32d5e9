"""The RAG client over a store: documents (read, chunk) and search (dense | sparse | hybrid, rerank, lazy fill)."""

from ovembed.rag.documents import Document, chunk_spans, read_documents
from ovembed.rag.search import RAG, Result

__all__ = ["RAG", "Document", "Result", "chunk_spans", "read_documents"]
