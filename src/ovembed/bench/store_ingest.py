"""Re-embedding while documents are ingested, on a store of its own: the `reembed` job's rows/s and a writer
process's ingested chunks/s, each alone and both at once.

The model is a stand-in (`SyntheticEmbedder`: seeded vectors shaped like BGE-M3's, made in microseconds), so
what is measured is the store and the job's pipeline — pending pages read, vectors and lexical weights
written, checkpoints — and how the job and ingest slow each other down through the store; with a real model
the engine is the bottleneck, which `ovembed bench store reembed` measures."""

from __future__ import annotations

import multiprocessing
import threading
import time
import zlib

from ovembed.bench.store_data import corpus_vectors, sparse_corpus, sparse_row, unit_vectors
from ovembed.bench.store_fill import fill, refuse_filled, say
from ovembed.embedders import Embedder
from ovembed.errors import validation
from ovembed.store import ChunkInput, Space, VectorRow, open_store

INGEST_DOC_CHUNKS = 20  # chunks per ingested document: a few pages of text, as `ovembed ingest` writes them
REEMBED_BATCH = 256  # the job's default page
INGEST_ALONE_S = 5.0  # at most: as long as the job alone took, at least 1 s (a steady rate of documents)
SOURCE = "source"  # the active space, which ingest writes vectors for


class SyntheticEmbedder(Embedder):
    """Vectors without a model: seeded from the page's first text, dense and (for a sparse space) lexical."""

    def __init__(self, name: str, dim: int, sparse: bool):
        self.space = Space(name, "synthetic/store-bench", "fp32", dim, sparse=sparse)
        self.max_tokens = 512
        self.outputs = ["dense", "sparse"] if sparse else ["dense"]

    def embed(self, texts, sparse):
        seed = zlib.crc32(texts[0].encode())
        dense = unit_vectors(len(texts), self.space.dimension, seed)
        if not sparse:
            return dense, None
        lexical = sparse_corpus(len(texts), seed)
        return dense, [sparse_row(lexical, i) for i in range(len(texts))]

    def offsets(self, texts):
        raise validation("synthetic vectors come without a tokenizer")

    def colbert(self, texts):
        raise validation("synthetic vectors have no ColBERT output")


def ingest(url: str, dim: int, sparse: bool, tag: str, seconds: float, ready, stop, out) -> None:
    """A writer process: documents of INGEST_DOC_CHUNKS chunks, each with its vectors in the active space (the
    store records the chunks pending for every other space), until `stop` or `seconds`; puts (chunks, s)."""
    embedder = SyntheticEmbedder(SOURCE, dim, sparse)
    with open_store(url, create=False) as store:
        ready.set()
        chunks, doc = 0, 0
        started = time.perf_counter()
        while not stop.is_set() and time.perf_counter() - started < seconds:
            texts = [f"ingested {tag} {doc} {j}" for j in range(INGEST_DOC_CHUNKS)]
            ids = store.upsert_document(f"ingest-{tag}-{doc}", [ChunkInput(t) for t in texts])
            dense, lexical = embedder.embed(texts, sparse)
            store.put_vectors(SOURCE, [VectorRow(i, dense[j], lexical[j] if lexical else None)
                                       for j, i in enumerate(ids)])
            chunks, doc = chunks + len(ids), doc + 1
        out.put((chunks, time.perf_counter() - started))


class Writer:
    """`ingest` in a spawned process (its own interpreter and GIL, as a separate ingest is), started and ready."""

    def __init__(self, plan: dict, tag: str, seconds: float):
        context = multiprocessing.get_context("spawn")
        self.stop, ready, self.out = context.Event(), context.Event(), context.Queue()
        self.process = context.Process(target=ingest, args=(
            plan["db"], plan["dim"], plan["sparse"], tag, seconds, ready, self.stop, self.out))
        self.process.start()
        if not ready.wait(120):
            self.process.kill()
            raise RuntimeError("the ingest writer did not start")

    def result(self, stop: bool = True) -> tuple[int, float]:
        """(chunks, seconds) once it has stopped: told to now, or (stop=False) at the end of its seconds."""
        if stop:
            self.stop.set()
        chunks, seconds = self.out.get(timeout=600)
        self.process.join()
        return chunks, seconds


def reembed_worker(plan: dict) -> dict:
    """`run_child` target: fill plan["n"] chunks into the active space, then the job alone, ingest alone, and
    the job while ingest runs."""
    from ovembed.reembed.job import reembed

    url, n, dim, sparse, seed = (plan[key] for key in ("db", "n", "dim", "sparse", "seed"))
    with open_store(url) as store:
        refuse_filled(store, url)
        store.create_space(SyntheticEmbedder(SOURCE, dim, sparse).space)  # the first space: active
        say(f"{plan['label']}: reembed store, filling {n} x {dim} ...")
        fill(store, SOURCE, corpus_vectors(n, dim, seed + 11), sparse_corpus(n, seed + 11) if sparse else None)
    say(f"{plan['label']}: reembed alone ...")
    alone = reembed(url, SyntheticEmbedder("alone", dim, sparse), batch=REEMBED_BATCH, progress=False, space="alone")
    with open_store(url) as store:
        store.drop_space("alone")  # the next job starts from the same backlog, with no third space to write for
    say(f"{plan['label']}: ingest alone ...")
    ingest_chunks, ingest_s = Writer(plan, "alone", min(INGEST_ALONE_S, max(1.0, alone.seconds))).result(stop=False)
    with open_store(url) as store:
        backlog = store.count_chunks()  # the filled chunks and those ingested alone, all pending in the next job's space
    say(f"{plan['label']}: reembed while ingesting ...")
    return {"chunks": n, "batch": REEMBED_BATCH, "doc_chunks": INGEST_DOC_CHUNKS, "backlog": backlog,
            "reembed_alone_rows_per_s": round(alone.rows_per_s, 1),
            "ingest_alone_chunks_per_s": round(ingest_chunks / ingest_s, 1), **_together(plan, backlog)}


def _together(plan: dict, backlog: int) -> dict:
    """The job from the same backlog while the writer ingests; the writer stops once the job has done the
    backlog (rates over that overlap), then the job catches up on what was ingested meanwhile and converges."""
    from ovembed.reembed.job import job_name, reembed

    url, target = plan["db"], "target"
    writer = Writer(plan, "together", float("inf"))
    done: list = []
    job = threading.Thread(target=lambda: done.append(reembed(
        url, SyntheticEmbedder(target, plan["dim"], plan["sparse"]), batch=REEMBED_BATCH, progress=False,
        space=target)), daemon=True)
    started = time.perf_counter()
    job.start()
    rows = 0
    with open_store(url) as watch:
        while job.is_alive() and rows < backlog:
            time.sleep(0.05)
            rows = watch.get_checkpoint(job_name(target))[1]
        overlap_s = time.perf_counter() - started
        ingested, ingest_s = writer.result()
        job.join()
        if not done:
            raise RuntimeError("the reembed job failed (see its error above)")
        # On a loaded machine the job can see nothing pending and end while the writer's last document is still
        # on its way: that document waits for the next run, as it would for a user's rerun (resumable).
        reruns = 0
        while watch.has_pending(target) and reruns < 3:
            done.append(reembed(url, SyntheticEmbedder(target, plan["dim"], plan["sparse"]), batch=REEMBED_BATCH,
                                progress=False, space=target))
            reruns += 1
        complete = not watch.has_pending(target) and watch.count_vectors(target) == watch.count_chunks()
    return {"reembed_during_rows_per_s": round(rows / overlap_s, 1), "ingest_during_chunks_per_s":
            round(ingested / ingest_s, 1), "overlap_s": round(overlap_s, 2), "ingested_during": ingested,
            "job_written": sum(run.written for run in done), "job_s": round(sum(run.seconds for run in done), 3),
            "job_reruns": reruns, "caught_up": complete}
