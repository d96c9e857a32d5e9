"""Re-embedding a store into a new space: resumable, idempotent, local or on Ray."""

from ovembed.reembed.job import ReembedStats, reembed

__all__ = ["ReembedStats", "reembed"]
