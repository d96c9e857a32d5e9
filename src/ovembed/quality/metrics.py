"""Retrieval and STS metrics, computed as BEIR/MTEB do: nDCG@k (gain = relevance, log2 discount, per query,
then the mean), Recall@k, MRR@k; Spearman of the score vs the gold similarity on STS pairs."""

from __future__ import annotations

import math

import numpy as np


def ndcg_at_k(ranked: list[str], relevant: dict[str, int], k: int) -> float:
    dcg = sum(relevant.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sorted((r for r in relevant.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: list[str], relevant: dict[str, int], k: int) -> float:
    wanted = {d for d, r in relevant.items() if r > 0}
    return len(wanted & set(ranked[:k])) / len(wanted) if wanted else 0.0


def mrr_at_k(ranked: list[str], relevant: dict[str, int], k: int) -> float:
    for i, doc in enumerate(ranked[:k]):
        if relevant.get(doc, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def score_run(run: dict[str, list[str]], qrels: dict[str, dict[str, int]], k: int = 10) -> dict[str, float]:
    """Mean metrics over the queries that have qrels (a query with no results scores 0)."""
    metrics = {f"ndcg@{k}": ndcg_at_k, f"recall@{k}": recall_at_k, "recall@100": recall_at_k, f"mrr@{k}": mrr_at_k}
    out = {}
    for name, fn in metrics.items():
        cut = 100 if name == "recall@100" else k
        out[name] = float(np.mean([fn(run.get(q, []), rel, cut) for q, rel in qrels.items()]))
    return out


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (as scipy.stats.rankdata)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return (starts + (counts + 1) / 2)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(_average_ranks(np.asarray(a)), _average_ranks(np.asarray(b)))[0, 1])
