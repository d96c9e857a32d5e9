"""`ovembed eval`'s runs: every (model, dataset, mode) of the request, one result row each, retrieval scored
by nDCG/Recall/MRR and STS by Spearman."""

from __future__ import annotations

import sys
from pathlib import Path

from ovembed.embedders import Embedder, embedder_for
from ovembed.engine.scoring import DEFAULT_WEIGHTS
from ovembed.errors import validation
from ovembed.quality.cache import DEFAULT_CACHE, encode
from ovembed.quality.datasets import RetrievalSet, cross_lingual_pairs, dataset_name, is_retrieval, load_retrieval, load_sts
from ovembed.quality.metrics import score_run, spearman
from ovembed.quality.modes import DEPTH, NEEDS, Scorer, modes_for, pair_scores, top_documents

QUERY_BLOCK = 256  # queries scored against the corpus at once


def evaluate(models: list[str], datasets: list[str], k: int = 10, cache: Path | None = DEFAULT_CACHE,
             api_key: str | None = None, modes: list[str] | tuple[str, ...] = ("dense",), cross_lingual: bool = False,
             weights: dict[str, float] | None = None, url: str | None = None) -> list[dict]:
    """One row per (model, dataset, mode). Modes a model lacks (MiniLM has no sparse or ColBERT output) are
    skipped with a note on stderr; asking for a mode no model has is an error."""
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
    if k < 1:
        raise validation(f"--k must be 1 or more, not {k}")
    folders = [Path(d) for d in datasets]
    for folder in folders:
        if not folder.is_dir():
            raise validation(f"{folder}: not a folder (a BEIR folder or an STS folder with pairs.tsv)")
    runs = [(f, f) for f in folders] + (cross_lingual_pairs(folders) if cross_lingual else [])
    if cross_lingual and len(runs) == len(folders):
        raise validation("--cross-lingual needs two or more retrieval folders of one collection, e.g. xquad/de and "
                         "xquad/en")
    sets: dict[Path, RetrievalSet] = {f: load_retrieval(f) for f in folders if is_retrieval(f)}
    sts = {f: load_sts(f) for f in folders if f not in sets}
    rows = []
    for spec in models:
        embedder = embedder_for(spec, api_key, url)
        label = embedder.space.name
        usable = modes_for(embedder, list(modes))
        for skipped in (m for m in modes if m not in usable):
            missing = "/".join(sorted(NEEDS[skipped] - {"dense", *embedder.outputs}))
            print(f"ovembed eval: {label} has no {missing} output; mode {skipped} skipped", file=sys.stderr)
        memo: dict = {}  # outputs computed for this model in this run (a corpus serves several query sets)
        outputs = set().union(*(NEEDS[m] for m in usable)) if usable else set()
        for queries_from, corpus_from in runs:
            if not usable:
                break
            name = dataset_name(corpus_from) if queries_from == corpus_from else \
                f"{dataset_name(queries_from)}→{corpus_from.name}"
            if corpus_from in sets:
                rows += _retrieval_rows(embedder, sets[queries_from], sets[corpus_from], name, usable, outputs,
                                        k, cache, weights, memo)
            else:
                first, second, gold = sts[corpus_from]
                a = encode(embedder, first, outputs, f"{label} {name} a", cache, memo)
                b = encode(embedder, second, outputs, f"{label} {name} b", cache, memo)
                for mode in usable:
                    rows.append({"model": label, "dataset": name, "mode": mode,
                                 "spearman": round(spearman(pair_scores(a, b, mode, weights), gold), 4)})
    if models and not rows and folders:
        raise validation(f"no model given has the outputs for mode(s) {', '.join(modes)}")
    return rows


def _retrieval_rows(embedder: Embedder, queries_set: RetrievalSet, corpus_set: RetrievalSet, name: str,
                    modes: list[str], outputs: set[str], k: int, cache: Path | None,
                    weights: dict[str, float], memo: dict) -> list[dict]:
    label = embedder.space.name
    doc_ids = list(corpus_set.corpus)
    qrels = queries_set.qrels
    shared = sum(d in corpus_set.corpus for rel in qrels.values() for d in rel)
    if shared < 0.9 * sum(len(rel) for rel in qrels.values()):
        raise validation(f"{name}: the queries' qrels name documents missing from the corpus; a cross-lingual run "
                         "needs collections with shared ids (as XQuAD's languages)")
    qids = list(qrels)
    docs = encode(embedder, [corpus_set.corpus[d] for d in doc_ids], outputs, f"{label} {name} corpus", cache, memo)
    queries = encode(embedder, [queries_set.queries[q] for q in qids], outputs, f"{label} {name} queries", cache,
                     memo)
    rows = []
    for mode in modes:
        scorer = Scorer(docs, mode, weights)
        run = {}
        for start in range(0, len(qids), QUERY_BLOCK):
            block = queries.rows(start, start + QUERY_BLOCK)
            run.update(zip(qids[start : start + QUERY_BLOCK],
                           top_documents(scorer.scores(block), doc_ids, max(DEPTH, k))))
        metrics = score_run(run, qrels, k)
        rows.append({"model": label, "dataset": name, "mode": mode, **{m: round(v, 4) for m, v in metrics.items()}})
    return rows
