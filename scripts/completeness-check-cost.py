"""What search pays to know the active space is complete, on a SQLite store of N chunks: the two COUNT(*)s of
ovembed before issue 14 against the pending-row probe it runs now.

    python scripts/completeness-check-cost.py 200000 /tmp/cost.db    # fills the store (~45 s per 200k), then times

The store is filled through the store API with random unit vectors (1024 dims, 1000 chunks per document)."""

import sys
import time

import numpy as np

from ovembed.store import ChunkInput, Space, VectorRow, open_store


def main(n: int, path: str, dim: int = 1024) -> None:
    with open_store(path) as store:
        store.create_space(Space("m", "test/m", "fp32", dim, "random"))
        rng = np.random.default_rng(0)
        started = time.perf_counter()
        for d in range(n // 1000):
            ids = store.upsert_document(f"d{d}", [ChunkInput(f"doc {d} chunk {i}") for i in range(1000)])
            v = rng.standard_normal((1000, dim)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            store.put_vectors("m", [VectorRow(i, v[j]) for j, i in enumerate(ids)])
        print(f"filled {n} chunks in {time.perf_counter() - started:.0f} s")
    checks = {"before: COUNT(vectors) + COUNT(chunks)": lambda s: s.count_vectors("m") >= s.count_chunks(),
              "now: pending probe (EXISTS)": lambda s: s.has_pending("m")}
    for label, check in checks.items():
        with open_store(path) as store:
            check(store)  # warm the page cache
            times = []
            for _ in range(5):
                t = time.perf_counter()
                check(store)
                times.append(time.perf_counter() - t)
        print(f"{label}: median {sorted(times)[2] * 1000:.2f} ms of 5 (warm)")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
