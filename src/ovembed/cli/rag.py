"""The RAG store's commands: `ingest`, `search`, `spaces`, `reembed`."""

from __future__ import annotations

import click

from ovembed.cli.common import api_key_option, db_option, json_option, print_json, service_url, url_option

MODES = ("dense", "sparse", "hybrid")


def embedder_options(command):
    """How a command reaches a model: a folder in-process, or a running service (`--url`, OVEMBED_URL)."""
    for decorate in reversed((click.option("--model", help="model folder, embedding in-process"),
                              url_option(), api_key_option())):
        command = decorate(command)
    return command


def _rag(db: str, model: str | None, url: str | None, api_key: str | None):
    from ovembed.embedders import make_embedder
    from ovembed.rag import RAG
    from ovembed.store import open_store

    return RAG(open_store(db), make_embedder(model, service_url(url, model), api_key))


@click.command(short_help="read, chunk, embed and store documents (.txt, .md, .jsonl, a folder, or -)")
@click.argument("path")
@click.option("--chunk-tokens", type=int, default=512, show_default=True,
              help="tokens per chunk (capped at the model's max)")
@click.option("--overlap", type=int, default=64, show_default=True, help="tokens shared by neighbouring chunks")
@db_option()
@embedder_options
@json_option()
def ingest(path, chunk_tokens, overlap, db, model, url, api_key, as_json) -> None:
    """Ingest PATH: a file, a folder, or '-' for JSON lines on stdin."""
    from ovembed.rag import read_documents

    docs = read_documents(path)  # all read and checked before anything is written
    rag = _rag(db, model, url, api_key)
    with rag.store:
        stats = rag.ingest(docs, chunk_tokens=chunk_tokens, overlap=overlap)
    if as_json:
        print_json(stats)
        return
    click.echo(f"ingested {stats['documents']} documents as {stats['chunks']} chunks into {db}"
               + (f" ({stats['empty']} empty documents skipped)" if stats["empty"] else ""))


@click.command(short_help="search the active space: dense, sparse (lexical) or hybrid")
@click.argument("query")
@click.option("-k", type=int, default=10, show_default=True, help="results")
@click.option("--mode", default="dense", show_default=True, type=click.Choice(MODES))
@click.option("--rerank", is_flag=True, help="rerank candidates with ColBERT (M3's combined score)")
@db_option()
@embedder_options
@json_option()
def search(query, k, mode, rerank, db, model, url, api_key, as_json) -> None:
    """Search the store's active space for QUERY."""
    rag = _rag(db, model, url, api_key)
    with rag.store:
        results = rag.search(query, k=k, mode=mode, rerank=rerank)
    if as_json:
        print_json([{"rank": i + 1, "score": r.score, "scores": r.scores, "chunk_id": r.chunk.id,
                     "doc_id": r.chunk.doc_id, "text": r.chunk.text, "metadata": r.chunk.metadata}
                    for i, r in enumerate(results)])
        return
    for i, r in enumerate(results, 1):
        preview = " ".join(r.chunk.text.split())[:100]
        click.echo(f"{i:>3}  {r.score:8.4f}  {r.chunk.doc_id[:30]:30s}  {preview}")


@click.command(short_help="list, activate (switch search over, or roll back) or drop embedding spaces")
@click.argument("action", type=click.Choice(["list", "activate", "drop"]))
@click.argument("name", required=False)
@click.option("--force", is_flag=True, help="activate even if the space is incomplete")
@db_option()
@json_option()
def spaces(action, name, force, db, as_json) -> None:
    """List the store's spaces, ACTIVATE one (switch search over, or roll back), or DROP one."""
    from ovembed.store import open_store

    with open_store(db) as store:
        if action == "activate":
            store.activate(name, force=force)
            click.echo(f"active space: {name}")
        elif action == "drop":
            store.drop_space(name)
            click.echo(f"dropped space {name}")
        statuses = store.spaces()
    if action != "list":
        return
    if as_json:
        print_json([{"name": s.space.name, "model_id": s.space.model_id, "precision": s.space.precision,
                     "dimension": s.space.dimension, "sparse": s.space.sparse, "active": s.active,
                     "vectors": s.vectors, "chunks": s.chunks, "complete": s.complete} for s in statuses])
        return
    for s in statuses:
        click.echo(f"{'*' if s.active else ' '} {s.space.name:30s} {s.space.model_id:40s} {s.space.dimension:>5}d "
                   f"{s.vectors}/{s.chunks} {'complete' if s.complete else 'incomplete'}")


@click.command(short_help="fill a new space (another model) from the stored chunk texts, resumably")
@click.option("--to", "target", required=True, help="model folder or service URL that makes the new space's vectors")
@click.option("--from", "source", help="the space being replaced (checked to exist)")
@click.option("--batch", type=int, default=256, show_default=True, help="chunks per page")
@click.option("--activate", is_flag=True, help="switch search to the new space when complete")
@click.option("--engine", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help="run here, or on Ray (ovembed[ray])")
@click.option("--actors", type=int, default=2, show_default=True, help="Ray: model actors")
@click.option("--retries", type=int, default=8, show_default=True, help="PostgreSQL reconnects in a row without "
              "progress before giving up (about a minute of outage; a rerun resumes anyway)")
@db_option()
@api_key_option()
@json_option("print the summary as JSON (and no progress bar)")
def reembed(target, source, batch, activate, engine, actors, retries, db, api_key, as_json) -> None:
    """Embed every stored chunk with the model at --to into its own space; a rerun resumes."""
    from ovembed.store import open_store

    if source:
        with open_store(db) as store:
            store.space(source)  # must exist: a clear error for a typo
    if engine == "ray":
        from ovembed.reembed.ray_backend import reembed_ray

        stats = reembed_ray(db, target, batch=batch, activate=activate, actors=actors, api_key=api_key)
    else:
        from ovembed.embedders import embedder_for
        from ovembed.reembed import reembed as run_reembed

        stats = run_reembed(db, embedder_for(target, api_key), batch=batch, activate=activate,
                            progress=not as_json, retries=retries)
    if as_json:
        print_json(stats.as_dict())
        return
    click.echo(f"space {stats.space}: {stats.written} vectors written ({stats.reused} reused for identical texts), "
               f"{stats.already} already there, {stats.chunks} chunks; {stats.seconds:.1f} s, "
               f"{stats.rows_per_s:.1f} rows/s" + ("; now active" if stats.activated else
                                                    f"; activate with `ovembed spaces activate {stats.space}`"))
