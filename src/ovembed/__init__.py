"""ovembed: BGE-M3 (and other encoders) as INT8 OpenVINO models on the CPU."""

from ovembed.engine import EmbeddingModel, Embeddings, TokenBudget, load_model
from ovembed.errors import ErrorKind, OvembedError

__version__ = "0.1.0"
__all__ = ["Client", "EmbeddingModel", "Embeddings", "ErrorKind", "OvembedError", "TokenBudget", "load_model"]


def __getattr__(name: str):
    # The HTTP client (httpx, tenacity) is loaded on first use: every `ovembed` command imports this package.
    if name == "Client":
        from ovembed.client import Client

        return Client
    raise AttributeError(f"module 'ovembed' has no attribute {name!r}")
