"""RSS and time of one in-process model under calls of random shapes, with given OpenVINO shape-cache and
oneDNN kernel-cache sizes (OVEMBED_SHAPE_CACHE, OVEMBED_KERNEL_CACHE).

    python scripts/cache-check.py MODEL_FOLDER --shape-cache 128 --kernel-cache 128
    python scripts/cache-check.py MODEL_FOLDER --shape-cache 5000 --kernel-cache 1024   # OpenVINO's and oneDNN's defaults

Runs `--calls` calls of random batch 1..--max-batch x length 4..--max-length (seeded), then the same calls
again; prints RSS (MB) every `--every` calls and each pass's seconds. Flat RSS in the second pass means the
caches are full; the first pass's growth is what the caches cost."""

import argparse
import time

import numpy as np
import psutil

from ovembed.engine import load_model

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("model")
p.add_argument("--shape-cache", type=int, default=128)
p.add_argument("--kernel-cache", type=int, default=128)
p.add_argument("--calls", type=int, default=600)
p.add_argument("--every", type=int, default=100)
p.add_argument("--max-batch", type=int, default=16)
p.add_argument("--max-length", type=int, default=250)
args = p.parse_args()

model = load_model(args.model, shape_cache=args.shape_cache, kernel_cache=args.kernel_cache)
process = psutil.Process()
ids = [model.manifest.special_token_ids[0]] + [1000] * args.max_length


def call(n: int, length: int) -> None:
    model.embed_tokens([ids[:length]] * n, ["dense"])


def rss() -> int:
    return round(process.memory_info().rss / 2**20)


call(1, 16)
rng = np.random.default_rng(0)
shapes = [(int(rng.integers(1, args.max_batch + 1)), int(rng.integers(4, args.max_length + 1))) for _ in range(args.calls)]
print(f"shape cache {args.shape_cache}, kernel cache {args.kernel_cache}: RSS {rss()} MB after one call", flush=True)
for name in ("first pass", "same shapes again"):
    started = time.perf_counter()
    for i, (n, length) in enumerate(shapes, 1):
        call(n, length)
        if i % args.every == 0:
            print(f"  {name}: {i} calls, RSS {rss()} MB", flush=True)
    print(f"{name}: {time.perf_counter() - started:.2f} s, RSS {rss()} MB", flush=True)
