"""The RAG store's commands: `ingest`, `search`, `spaces`, `reembed`."""

from __future__ import annotations

import click

from ovembed.cli.common import (
    api_key_option,
    db_option,
    json_option,
    print_json,
    service_url,
    url_option,
    usage,
)

MODES = ("dense", "sparse", "hybrid")


def embedder_options(command):
    """How a command reaches a model: a folder in-process, or a running service (`--url`, OVEMBED_URL)."""
    for decorate in reversed((
            click.option("--model", help="with --url: a model that service serves (name, hub id or alias); "
                         "without: a model folder, embedding in-process. Default: the model of the space"),
            url_option(), api_key_option(),
            click.option("--space", help="the space to work on (default: the active one; for the first ingest, "
                         "its name)"))):
        command = decorate(command)
    return command


def _rag(db: str, model: str | None, url: str | None, api_key: str | None, space: str | None, create: bool):
    from ovembed.embedders import make_embedder
    from ovembed.rag import RAG
    from ovembed.store import open_store

    store = open_store(db, create=create)
    try:
        # The space whose model embeds: --space, else the active one. Ingest into an empty store: --space names
        # the first space, which does not exist yet.
        target = store.active_space()
        if space and (target is not None or not create):
            target = store.find_space(space)
        return RAG(store, make_embedder(model, service_url(url, model), api_key, space=target), space)
    except BaseException:
        store.close()
        raise


@click.command(short_help="read, chunk, embed and store documents (.txt .md .json .jsonl .pdf .html, a folder, or -)")
@click.argument("path")
@click.option("--chunk-tokens", type=int, default=512, show_default=True,
              help="tokens per chunk (capped at the model's max)")
@click.option("--overlap", type=int, default=64, show_default=True, help="tokens shared by neighbouring chunks")
@db_option()
@embedder_options
@json_option()
def ingest(path, chunk_tokens, overlap, db, model, url, api_key, space, as_json) -> None:
    """Ingest PATH: a file, a folder, or '-' for JSON lines on stdin."""
    from ovembed.rag import read_documents

    docs = read_documents(path)  # all read and checked before anything is written
    rag = _rag(db, model, url, api_key, space, create=True)
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
def search(query, k, mode, rerank, db, model, url, api_key, space, as_json) -> None:
    """Search the store's active space (or --space) for QUERY."""
    rag = _rag(db, model, url, api_key, space, create=False)
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


@click.command(short_help="list, activate (switch search over, or roll back), index or drop embedding spaces")
@click.argument("action", type=click.Choice(["list", "activate", "index", "drop"]))
@click.argument("name", required=False)
@click.option("--force", is_flag=True, help="activate even if chunks are still pending (search skips them until "
              "filled)")
@click.option("--model", help="activate: the space's model, to embed what is pending (a folder, or with --url a "
              "served model). Default: where the space was made")
@click.option("--max-catch-up", type=int, default=1000, show_default=True,
              help="activate: embed at most this many pending chunks; more is `ovembed reembed`'s work")
@db_option()
@url_option(help="list: also show which model of this service makes each space; activate: the service that embeds "
            "what is pending")
@api_key_option()
@json_option()
def spaces(action, name, force, model, max_catch_up, db, url, api_key, as_json) -> None:
    """List the store's spaces, ACTIVATE one (switch search over, or roll back), or DROP one. NAME is a space's
    name or its model's (hub id, short name), as the server accepts them. Activation first embeds the chunks
    still pending in the space (ingested since it was filled) with its model, the last of them inside the switch.
    INDEX builds a space's search indexes now, dense and lexical (activation and reembed do it; a store from an
    older ovembed, or one filled row by row, otherwise gets its dense index at its first searches, in the
    background; a space filled in bulk searches its lexical weights by a scan until built)."""
    from ovembed.store import open_store

    if action != "list" and not name:
        raise click.UsageError(f"`spaces {action}` needs the space's NAME")
    with open_store(db, create=False) as store:
        if action == "activate":
            space = store.find_space(name)
            compute = None if force else _catch_up(space, model, service_url(url, model), api_key)
            store.activate(space.name, force=force, compute=compute, max_catch_up=max_catch_up)
            click.echo(f"active space: {space.name}")
        elif action == "index":
            name = store.find_space(name).name
            store.build_index(name)
            click.echo(f"indexed space {name}")
        elif action == "drop":
            name = store.find_space(name).name
            store.drop_space(name)
            click.echo(f"dropped space {name}")
        statuses = store.spaces()
    if action != "list":
        return
    served = _served_by(url, api_key, [s.space for s in statuses]) if url else {}
    if as_json:
        print_json([{"name": s.space.name, "model_id": s.space.model_id, "precision": s.space.precision,
                     "dimension": s.space.dimension, "sparse": s.space.sparse, "fingerprint": s.space.fingerprint,
                     "active": s.active, "state": s.state, "vectors": s.vectors, "chunks": s.chunks,
                     "pending": s.pending, "complete": s.complete,
                     **({"served_as": served.get(s.space.name)} if url else {})} for s in statuses])
        return
    for s in statuses:
        where = f"  served as {served[s.space.name]}" if served.get(s.space.name) else ("  not served" if url else "")
        click.echo(f"{'*' if s.active else ' '} {s.space.name:30s} {s.space.model_id:40s} {s.space.dimension:>5}d "
                   f"{s.state:8s} {s.vectors}/{s.chunks} "
                   f"{'complete' if s.complete else f'{s.pending} pending'}{where}")


def _catch_up(space, model: str | None, url: str | None, api_key: str | None):
    """Activation's catch-up: embeds with the space's model, loaded (or reached) on the first call only, so a
    space with nothing pending needs no model at all."""
    embedder = None

    def compute(chunks):
        nonlocal embedder
        if embedder is None:
            from ovembed.embedders import make_embedder

            embedder = make_embedder(model, url, api_key, space=space)
            if not embedder.space.same_model(space):  # another model's vectors must never enter this space
                raise usage(f"--model makes {embedder.space.describe()} vectors, not those of space "
                            f"'{space.name}' ({space.describe()}): pass that space's model")
        return embedder.vectors(chunks)

    return compute


def _served_by(url: str, api_key: str | None, spaces: list) -> dict[str, str]:
    """Space name -> the served model that makes it, for the spaces a service at `url` can embed (one status
    request for all of them)."""
    from ovembed.client import Client
    from ovembed.embedders import serving

    with Client(url, api_key=api_key) as client:
        status = client.status()
    return {space.name: info["name"] for space in spaces if (info := serving(status, space)) is not None}


@click.command(short_help="fill a new space (another model) from the stored chunk texts, resumably")
@click.option("--to", "target", required=True, help="with --url: a model that service serves; without: a model "
              "folder (or a service URL: its default model)")
@click.option("--from", "source", help="the space being replaced (checked to exist)")
@click.option("--space", help="the new space's name (default: the space this model already fills, else the "
              "model's name)")
@click.option("--batch", type=int, default=256, show_default=True, help="chunks per page")
@click.option("--activate", is_flag=True, help="switch search to the new space when complete")
@click.option("--engine", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help="run here, or on Ray (ovembed[ray])")
@click.option("--actors", type=int, default=2, show_default=True, help="Ray: model actors")
@click.option("--actor-cpus", type=int, help="Ray: CPUs each actor takes, and its OpenVINO threads (default: the "
              "cluster's CPUs shared out among the actors)")
@click.option("--models-dir", help="Ray: where nodes find the --to folder by its name (default: its parent here); "
              "a node's own OVEMBED_MODELS_DIR wins")
@click.option("--actors-start-timeout", type=click.FloatRange(min=1), default=600, show_default=True,
              help="Ray: seconds for all actors to start (load their model; an autoscaling cluster: add nodes)")
@click.option("--retries", type=int, default=8, show_default=True, help="PostgreSQL reconnects in a row without "
              "progress before giving up (about a minute of outage; a rerun resumes anyway)")
@db_option()
@url_option()
@api_key_option()
@json_option("print the summary as JSON (and no progress bar)")
def reembed(target, source, space, batch, activate, engine, actors, actor_cpus, models_dir, actors_start_timeout, retries,
            db, url, api_key, as_json) -> None:
    """Embed every stored chunk with the model at --to into its own space; a rerun resumes."""
    from ovembed.store import open_store

    url = service_url(url, target)
    with open_store(db, create=False) as store:
        if source:
            store.find_space(source)  # must exist: a clear error for a typo
    if engine == "ray":
        from ovembed.reembed.ray_backend import reembed_ray

        stats = reembed_ray(db, target, batch=batch, activate=activate, actors=actors, api_key=api_key, url=url,
                            space_name=space, actor_cpus=actor_cpus, models_dir=models_dir, progress=not as_json,
                            actors_start_s=actors_start_timeout)
    else:
        from ovembed.embedders import embedder_for
        from ovembed.reembed import reembed as run_reembed

        stats = run_reembed(db, embedder_for(target, api_key, url), batch=batch, activate=activate,
                            progress=not as_json, retries=retries, space=space)
    if as_json:
        print_json(stats.as_dict())
        return
    click.echo(f"space {stats.space}: {stats.written} vectors written ({stats.reused} reused for identical texts), "
               f"{stats.already} already there, {stats.chunks} chunks; {stats.seconds:.1f} s, "
               f"{stats.rows_per_s:.1f} rows/s" + ("; now active" if stats.activated else
                                                    f"; activate with `ovembed spaces activate {stats.space}`"))
