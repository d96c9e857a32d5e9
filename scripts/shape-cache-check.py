"""RSS of one in-process model under calls of random shapes, with a given OpenVINO shape-cache size.

    python scripts/shape-cache-check.py MODEL_FOLDER SHAPE_CACHE      # e.g. models/minilm-int8 128, then 5000

Prints RSS (MB) every 300 calls of batch 1-16 x length 4-250 (seeded): flat once the cache is full."""

import sys

import numpy as np
import psutil

from ovembed.engine import load_model

model = load_model(sys.argv[1], shape_cache=int(sys.argv[2]))
rng, process = np.random.default_rng(0), psutil.Process()
for i in range(1501):
    n, length = int(rng.integers(1, 17)), int(rng.integers(4, 250))
    model.embed_tokens([[101] + [2000] * (length - 2) + [102]] * n, ["dense"])
    if i % 300 == 0:
        print(i, round(process.memory_info().rss / 2**20), flush=True)
