"""The speed and STS-B columns of docs/quality.md §5: for each model folder, STS-B en Spearman (cosine against
the gold score), one short query's p50 latency and batch-32 throughput, in-process.

    python scripts/outlier-figures.py FOLDER [FOLDER ...] [--data ../shared/data]"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from ovembed import load_model

BATCHES = 30
QUERY = "how do I reset the password of my home wifi router"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    with open(args.data / "stsb_multi_mt" / "en" / "pairs.tsv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    batch = [r["sentence1"] + " " + r["sentence2"] for r in rows[:32]]
    for folder in args.folders:
        model = load_model(folder)
        a = model.embed([r["sentence1"] for r in rows]).dense
        b = model.embed([r["sentence2"] for r in rows]).dense
        rho = spearmanr(np.sum(a * b, axis=1), [float(r["score"]) for r in rows]).statistic
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
