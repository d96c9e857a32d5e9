"""The speed and STS-B columns of docs/quality.md §5: for each model folder, STS-B en Spearman (cosine against
the gold score), one short query's p50 latency and batch-32 throughput, in-process.

    python scripts/outlier-figures.py FOLDER [FOLDER ...] [--data ../shared/data]"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ovembed import load_model
from ovembed.quality.datasets import load_sts
from ovembed.quality.metrics import spearman

BATCHES = 30
QUERY = "how do I reset the password of my home wifi router"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    left, right, gold = load_sts(args.data / "stsb_multi_mt" / "en")
    batch = [a + " " + b for a, b in zip(left[:32], right[:32], strict=True)]
    for folder in args.folders:
        model = load_model(folder)
        a, b = model.embed(left).dense, model.embed(right).dense
        rho = spearman(np.sum(a * b, axis=1), gold)
        for _ in range(5):
            model.embed([QUERY])
        latencies = []
        for _ in range(60):
            start = time.perf_counter()
            model.embed([QUERY])
            latencies.append(time.perf_counter() - start)
        model.embed(batch)
        start = time.perf_counter()
        for _ in range(BATCHES):
            model.embed(batch)
        rate = BATCHES * len(batch) / (time.perf_counter() - start)
        print(f"{folder.name:24s} STS-B en {rho:.4f}  1 query p50 {np.median(latencies) * 1000:.1f} ms  "
              f"batch-32 {rate:.0f} texts/s  table {model.manifest.token_table_dtype}", flush=True)


if __name__ == "__main__":
    main()
