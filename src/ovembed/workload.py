"""Texts and statistics shared by `ovembed validate` and the measuring tools in `ovembed.bench`: neither side
imports the other, both import this."""

from __future__ import annotations

import numpy as np

# Common words, so most tokenizers give about one token per word.
WORDS = ("river", "market", "engine", "garden", "report", "window", "signal", "history", "planet", "music",
         "winter", "bridge", "letter", "doctor", "science", "coffee", "ocean", "school", "travel", "money",
         "forest", "energy", "camera", "island", "system", "student", "language", "summer", "kitchen", "storm",
         "network", "village", "mountain", "question", "library", "painting", "weather", "contract", "station")
QUERY_WORDS = 13  # + a number, [CLS] and [SEP]: about 16 tokens


def varied_texts(count: int, words: int) -> list[str]:
    """`count` different texts of `words` words each, cycling through WORDS with a per-text stride."""
    texts = []
    for i in range(count):
        picked = [WORDS[(i * 7 + j * (1 + i % 5)) % len(WORDS)] for j in range(words)]
        texts.append(f"{i} " + " ".join(picked))
    return texts


def percentiles(times_ms: list[float]) -> dict[str, float]:
    p50, p95, p99 = np.percentile(times_ms, [50, 95, 99])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "p99": round(float(p99), 2)}
