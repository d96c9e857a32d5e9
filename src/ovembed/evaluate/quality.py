"""`ovembed eval`: retrieval (BEIR folders) and STS quality of one or more models, side by side."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ovembed.evaluate.retrieval import dense_run, is_retrieval, load_retrieval, load_sts, score_run, spearman
from ovembed.rag import Embedder, LocalEmbedder, embedder_for

DEFAULT_CACHE = Path.home() / ".cache" / "ovembed" / "eval"
BATCH = 64


def model_key(embedder: Embedder) -> str:
    """What identifies a model's vectors: its files' checksums when local, its id at its URL otherwise."""
    if isinstance(embedder, LocalEmbedder):
        ident = json.dumps(embedder.model.manifest.files, sort_keys=True)
    else:
        ident = json.dumps([embedder.space.model_ref, embedder.space.model_id, embedder.space.precision])
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def embed_texts(embedder: Embedder, texts: list[str], label: str, cache: Path | None) -> np.ndarray:
    """Dense vectors for texts, cached per model and content so reruns are fast."""
    path = None
    if cache is not None:
        digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:24]
        path = cache / model_key(embedder) / f"{digest}.npy"
        if path.is_file():
            return np.load(path)
    parts = []
    for start in tqdm(range(0, len(texts), BATCH), desc=label, unit="batch", leave=False):
        parts.append(embedder.embed(texts[start : start + BATCH], sparse=False)[0])
    vectors = np.concatenate(parts) if parts else np.zeros((0, embedder.space.dimension), np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return vectors


def evaluate(models: list[str], datasets: list[str], k: int = 10, cache: Path | None = DEFAULT_CACHE,
             api_key: str | None = None) -> list[dict]:
    rows = []
    for spec in models:
        embedder = embedder_for(spec, api_key)
        label = f"{embedder.space.name}"
        for data in datasets:
            folder = Path(data)
            name = f"{folder.parent.name}/{folder.name}"
            if is_retrieval(folder):
                ds = load_retrieval(folder)
                doc_ids, qids = list(ds.corpus), list(ds.qrels)
                docs = embed_texts(embedder, [ds.corpus[d] for d in doc_ids], f"{label} {name} corpus", cache)
                queries = embed_texts(embedder, [ds.queries[q] for q in qids], f"{label} {name} queries", None)
                metrics = score_run(dense_run(qids, queries, doc_ids, docs), ds.qrels, k)
            else:
                first, second, gold = load_sts(folder)
                a = embed_texts(embedder, first, f"{label} {name} a", cache)
                b = embed_texts(embedder, second, f"{label} {name} b", cache)
                metrics = {"spearman": spearman(np.sum(a * b, axis=1), gold)}
            rows.append({"model": label, "dataset": name, "mode": "dense",
                         **{m: round(v, 4) for m, v in metrics.items()}})
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: one line per dataset, one column per model, with the change against the first model."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = ["| dataset | metric | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        by_model = {r["model"]: r for r in rows if r["dataset"] == dataset}
        metric = "spearman" if "spearman" in next(iter(by_model.values())) else "ndcg@10"
        base = by_model.get(models[0], {}).get(metric)
        cells = []
        for m in models:
            value = by_model.get(m, {}).get(metric)
            change = f" ({(value - base) / base:+.1%})" if base and value is not None and m != models[0] else ""
            cells.append("–" if value is None else f"{value:.4f}{change}")
        lines.append(f"| {dataset} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
