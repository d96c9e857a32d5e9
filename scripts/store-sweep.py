"""Search a store kept by `ovembed bench store search --keep DIR` again under each of several store settings in
turn, in one process, and print dense recall@k and latency for each: the beam sweeps of docs/benchmarks.md.

    python scripts/store-sweep.py DIR/sqlite ann_expansion_search=512 ann_expansion_search=4096 \\
        ann_expansion_search=512,ann_candidates=50
    python scripts/store-sweep.py DIR/postgresql hnsw_ef_search=100 hnsw_ef_search=1000

A setting list is comma-separated `name=value` pairs of ovembed.config.StoreSettings (env OVEMBED_STORE_*). The
first queries of each list are warm-up (as the bench's); the figures are over the timed ones. A PostgreSQL
store is started on its kept data, with its indexes prewarmed. Each list searches the graph its settings ask for:
where hnsw_m or hnsw_ef_construction (default 16 and 64) differ from the kept index's, it is built again first
(minutes at 1M) and the time printed. --passes 2 searches the timed queries again: the second pass finds the rows
it re-scores already in memory (the first reads them from disk or the page cache)."""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

from ovembed.bench.store import embedded_postgres, prewarm
from ovembed.bench.store_fill import SPACE, WARMUP_QUERIES, load_truth
from ovembed.bench.store_probe import timed
from ovembed.config import StoreSettings
from ovembed.store import open_store


def settings(spec: str) -> StoreSettings:
    return StoreSettings(**dict(pair.split("=", 1) for pair in spec.split(",")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a backend's folder under the --keep DIR (sqlite or postgresql)")
    parser.add_argument("settings", nargs="+", help="name=value[,name=value...] per run")
    parser.add_argument("--pg-shared-buffers", default="4GB")
    parser.add_argument("--passes", type=int, default=1, help="search the timed queries this many times")
    args = parser.parse_args()
    truth, queries = load_truth(args.folder)
    k = len(truth["dense"][0])
    postgres = (args.folder / "pgdata").is_dir()
    with (embedded_postgres(args.folder, args.pg_shared_buffers) if postgres else contextlib.nullcontext()) as server:
        url = server[0] if postgres else str(args.folder / "store.db")
        if postgres:  # as the bench does: the searched indexes in shared_buffers
            print(f"prewarmed: {prewarm(url)}", flush=True)
        for spec in args.settings:
            with open_store(url, create=False, settings=settings(spec)) as store:
                started = time.perf_counter()
                store.build_index(SPACE)  # nothing to do unless the graph's parameters differ from the settings
                if postgres and (took := time.perf_counter() - started) > 1:
                    print(f"{spec}: index built again in {took:.0f} s; prewarmed: {prewarm(url)}", flush=True)
                for query in queries[:WARMUP_QUERIES]:
                    store.search_dense(SPACE, query, k)
                for rerun in range(1, args.passes + 1):
                    found = timed(lambda q, s=store: s.search_dense(SPACE, q, k), list(queries[WARMUP_QUERIES:]),
                                  truth["dense"])
                    label = f"{spec} (pass {rerun})" if args.passes > 1 else spec
                    print(f"{label}: recall@{k} {found['recall']:.3f}, p50 {found['p50_ms']:.1f} ms, "
                          f"p95 {found['p95_ms']:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
