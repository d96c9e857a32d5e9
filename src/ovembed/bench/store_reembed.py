"""`ovembed bench store reembed`: the re-embedding pipeline against the engine alone.

A corpus is ingested, then re-embedded into a second space made by the same weights (the folder linked under
another name); the job's rows/s is compared with the engine's own batch texts/s on the same chunk texts, timed
just before and just after the job."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path

from ovembed.bench.common import machine, markdown
from ovembed.bench.store import opened, targets
from ovembed.bench.store_fill import refuse_filled, say
from ovembed.errors import validation

REEMBED_TARGET = 0.85  # the pipeline should keep the engine at least this busy


@dataclass
class ReembedOptions:
    model: Path  # a model folder made by `ovembed quantize`
    data: str  # documents to ingest (.jsonl, .txt/.md, or a folder)
    db: str | None = None  # a SQLite path or postgresql:// URL of an empty store; None: a throw-away one
    postgres_embedded: bool = False
    batch: int = 256  # chunks per page, for the job and the engine alike
    repeat: int = 4  # ingest the corpus this many times, texts varied
    limit: int = 0  # only the first N documents (0: all)
    command: str = ""


def _corpus(path: str, limit: int, repeat: int) -> list:
    """The corpus `repeat` times under new ids, each copy's texts marked at both ends, so that the first and
    last chunk of a document differ between copies and the job's dedup of identical texts does not kick in."""
    from ovembed.rag import Document, read_documents

    docs = read_documents(path)[: limit or None]
    return [Document(f"{d.id}#r{r}", f"[r{r}] {d.text} [r{r}]", d.metadata) for r in range(repeat) for d in docs]


def _chunk_texts(store) -> list[str]:
    texts, after = [], 0
    while page := store.chunks_after(after, 1000):
        texts.extend(c.text for c in page)
        after = page[-1].id
    return texts


def _engine_texts_per_s(model, texts: list[str], batch: int, sparse: bool, warm_up: bool) -> float:
    """The engine alone on the job's pages: the same texts, order and outputs."""
    pages = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    if warm_up:  # the first inferences compile kernels; the job gets the same warm model
        model.embed(pages[0], dense=True, sparse=sparse)
    started = time.perf_counter()
    for page in pages:
        model.embed(page, dense=True, sparse=sparse)
    return len(texts) / (time.perf_counter() - started)


def _run(opts: ReembedOptions, label: str, url: str) -> dict:
    from ovembed.embedders import LocalEmbedder
    from ovembed.rag import RAG
    from ovembed.reembed.job import reembed
    from ovembed.store import open_store

    docs = _corpus(opts.data, opts.limit, opts.repeat)
    with open_store(url) as store:
        refuse_filled(store, url)
        source = LocalEmbedder(opts.model)
        say(f"{label}: ingesting {len(docs)} documents with {source.space.name} ...")
        started = time.perf_counter()
        ingest = RAG(store, source).ingest(docs)
        ingest_s = time.perf_counter() - started
        texts = _chunk_texts(store)
    del source
    gc.collect()  # one model in memory at a time
    target = LocalEmbedder(opts.model)
    sparse = target.space.sparse
    space = f"{target.space.name}-reembedded"  # the same model into a space of its own: a full job to time
    # The engine is timed on the job's own model just before and just after the job (never during it):
    # on a shared machine the mean of the two brackets any drift in load.
    say(f"engine alone: {len(texts)} texts in pages of {opts.batch} ...")
    before = _engine_texts_per_s(target.model, texts, opts.batch, sparse, warm_up=True)
    say(f"{label}: re-embedding into space {space} ...")
    stats = reembed(url, target, batch=opts.batch, activate=False, progress=False, space=space)
    say(f"engine alone again: {len(texts)} texts ...")
    after = _engine_texts_per_s(target.model, texts, opts.batch, sparse, warm_up=False)
    engine = (before + after) / 2
    return {"backend": label, "documents": ingest["documents"], "chunks": stats.chunks, "batch": opts.batch,
            "outputs": "dense+sparse" if sparse else "dense", "ingest_s": round(ingest_s, 2),
            "ingest_chunks_per_s": round(ingest["chunks"] / ingest_s, 1), "reembed": stats.as_dict(),
            "reembed_rows_per_s": round(stats.rows_per_s, 1), "engine_texts_per_s": round(engine, 1),
            "engine_before_after": [round(before, 1), round(after, 1)], "ratio": round(stats.rows_per_s / engine, 4)}


def run_reembed(opts: ReembedOptions) -> dict:
    """Ingest, then re-embed, into the given store or a throw-away one; the report."""
    if opts.db and opts.postgres_embedded:
        raise validation("give --db or --postgres-embedded, not both")
    if not (Path(opts.model) / "ovembed.json").is_file():
        raise validation(f"{opts.model} is not a model folder made by `ovembed quantize`")
    label, given = targets([opts.db] if opts.db else [], ["postgresql"] if opts.postgres_embedded else [])[0]
    with opened(label, given) as (url, _):
        figures = _run(opts, label, url)
    return {"machine": machine(), "command": opts.command, "model": str(opts.model), "data": opts.data,
            "repeat": opts.repeat, **figures}


def reembed_text(r: dict) -> str:
    met = "met" if r["ratio"] >= REEMBED_TARGET else "NOT met"
    lines = [f"machine: {r['machine']}", f"command: {r['command']}",
             f"model: {r['model']} ({r['outputs']}); corpus: {r['data']} x {r['repeat']}; engine = mean of the runs "
             f"just before and after the job, never during it ({r['engine_before_after'][0]} and "
             f"{r['engine_before_after'][1]} texts/s)",
             markdown(["backend", "chunks", "batch", "ingest chunks/s", "reembed rows/s", "engine texts/s", "ratio"],
                      [[r["backend"], r["chunks"], r["batch"], r["ingest_chunks_per_s"], r["reembed_rows_per_s"],
                        r["engine_texts_per_s"], f"{100 * r['ratio']:.0f}%"]]),
             f"reembed = {100 * r['ratio']:.0f}% of the engine's batch throughput on the same texts "
             f"(target >= {100 * REEMBED_TARGET:.0f}%: {met})"]
    if r["reembed"]["reused"]:
        lines.append(f"note: {r['reembed']['reused']} chunks repeated an earlier text and were not embedded again")
    return "\n".join(lines)
