"""Search a store kept by `ovembed bench store search --keep DIR` again under each of several store settings in
turn, in one process, and print dense recall@k and latency for each: the beam sweeps of docs/benchmarks.md.

    python scripts/store-sweep.py DIR/sqlite ann_expansion_search=512 ann_expansion_search=4096 \\
        ann_expansion_search=512,ann_candidates=50
    python scripts/store-sweep.py DIR/postgresql hnsw_ef_search=100 hnsw_ef_search=1000

A setting list is comma-separated `name=value` pairs of ovembed.config.StoreSettings (env OVEMBED_STORE_*). The
first queries of each list are warm-up (as the bench's); the figures are over the timed ones. A PostgreSQL
store is started on its kept data. Each list searches the graph its settings ask for: where hnsw_m or
hnsw_ef_construction (default 16 and 64) differ from the kept index's, it is built again first (minutes at 1M; the
time is printed), and the index is prewarmed. --passes 2 searches the timed queries again: the second pass finds
the rows it re-scores already in memory (the first reads them from disk or the page cache).

A kept store has the ground truth of the bench's queries (100 unless --queries said otherwise): the standard
error of a recall over 100 queries is ~0.01-0.04 (the higher the recall, the lower). --queries N searches N other
queries of the same kind instead, their exact top-k computed once from the corpus made again from its seed (~2 min
and the corpus's memory at 1M x 1024: 4 GB) and kept beside the store (queries-N.npz). Recall is printed with its
standard error."""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import numpy as np

from ovembed.bench.store import embedded_postgres, prewarm
from ovembed.bench.store_data import CORPORA, exact_dense_top
from ovembed.bench.store_fill import SPACE, WARMUP_QUERIES, load_truth
from ovembed.bench.store_probe import timed
from ovembed.config import StoreSettings
from ovembed.store import open_store


def settings(spec: str) -> StoreSettings:
    return StoreSettings(**dict(pair.split("=", 1) for pair in spec.split(",")))


def chunk_ids(store) -> list[int]:
    """Every chunk's id in order: the filler wrote one chunk per corpus row, in row order."""
    ids: list[int] = []
    while page := store.chunks_after(ids[-1] if ids else 0, 20_000):
        ids += [chunk.id for chunk in page]
    return ids


def more_queries(folder: Path, url: str, options: dict, count: int) -> tuple[np.ndarray, list[list[int]]]:
    """`count` fresh queries (after the warm-up ones) for a kept store, and their exact top-k, cached in `folder`."""
    cache = folder / f"queries-{count}.npz"
    if not cache.is_file():
        make, ask = CORPORA[options["corpus"]]
        vectors = make(options["n"], options["dim"], options["seed"])  # the filled corpus, row i is the i-th chunk
        with open_store(url, create=False) as store:
            ids = np.asarray(chunk_ids(store), np.int64)
        if len(ids) != options["n"]:
            raise SystemExit(f"{folder}: the space holds {len(ids)} vectors, not the {options['n']} filled")
        queries = ask(vectors, WARMUP_QUERIES + count, options["seed"] + 1000)  # not the kept queries' seed
        top = exact_dense_top(vectors, ids, queries[WARMUP_QUERIES:], options["k"])
        np.savez(cache, queries=queries, top=np.asarray([sorted(t) for t in top], np.int64))
    found = np.load(cache)
    return found["queries"], found["top"].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a backend's folder under the --keep DIR (sqlite or postgresql)")
    parser.add_argument("settings", nargs="+", help="name=value[,name=value...] per run")
    parser.add_argument("--pg-shared-buffers", default="4GB")
    parser.add_argument("--passes", type=int, default=1, help="search the timed queries this many times")
    parser.add_argument("--queries", type=int, help="this many fresh queries instead of the kept ones")
    args = parser.parse_args()
    truth, queries = load_truth(args.folder)
    exact = truth["dense"]
    k = len(exact[0])
    postgres = (args.folder / "pgdata").is_dir()
    with (embedded_postgres(args.folder, args.pg_shared_buffers) if postgres else contextlib.nullcontext()) as server:
        url = server[0] if postgres else str(args.folder / "store.db")
        if args.queries:
            queries, exact = more_queries(args.folder, url, truth["options"], args.queries)
        for spec in args.settings:
            with open_store(url, create=False, settings=settings(spec)) as store:
                started = time.perf_counter()
                store.build_index(SPACE)  # nothing to do unless the graph's parameters differ from the settings
                if postgres:  # as the bench does: the searched index (built again or not) in shared_buffers
                    print(f"{spec}: index checked in {time.perf_counter() - started:.1f} s, prewarmed: {prewarm(url)}",
                          flush=True)
                for query in queries[:WARMUP_QUERIES]:
                    store.search_dense(SPACE, query, k)
                for rerun in range(1, args.passes + 1):
                    found = timed(lambda q, s=store: s.search_dense(SPACE, q, k), list(queries[WARMUP_QUERIES:]),
                                  exact)
                    label = f"{spec} (pass {rerun})" if args.passes > 1 else spec
                    print(f"{label}: recall@{k} {found['recall']:.3f} ± {found['recall_se']:.3f}, "
                          f"p50 {found['p50_ms']:.1f} ms, p95 {found['p95_ms']:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
