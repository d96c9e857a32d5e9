"""The serving-path engine: imports OpenVINO, tokenizers and NumPy only."""

from ovembed.engine.batcher import TokenBudget
from ovembed.engine.model import EmbeddingModel, Embeddings, load_model

__all__ = ["EmbeddingModel", "Embeddings", "TokenBudget", "load_model"]
