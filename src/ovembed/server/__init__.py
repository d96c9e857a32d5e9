"""The HTTP service: FastAPI routes over the engine and its batcher."""
