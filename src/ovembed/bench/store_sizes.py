"""What a filled store takes on disk, read from outside the Store API and defensively: the backends add index
files and tables of their own, and the benchmark reports whatever it finds beside the data rather than
knowing each backend's layout."""

from __future__ import annotations

from pathlib import Path

from ovembed.bench.store_fill import backend

MB = 2**20


def storage(url: str, space: str) -> dict:
    """{"total_mb", "parts": {name: MB}} and for PostgreSQL its shared_buffers setting."""
    return _sqlite(Path(url)) if backend(url) == "sqlite" else _postgres(url, space)


def _size(path: Path) -> int:
    """A file's size, or a folder's files' (lock files are empty and left out)."""
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return sum(f.stat().st_size for f in files if f.is_file() and f.suffix != ".lock")


def _sqlite(db: Path) -> dict:
    """The database, its WAL, and whatever lies beside it named `<db name>.*` (index files or folders)."""
    parts = {"database": db, "wal": Path(f"{db}-wal")}
    parts.update({f.name[len(db.name) + 1:]: f for f in sorted(db.parent.glob(f"{db.name}.*")) if f.suffix != ".lock"})
    sizes = {name: round(_size(f) / MB, 1) for name, f in parts.items() if f.exists()}
    return {"total_mb": round(sum(sizes.values()), 1), "parts": sizes}


def _postgres(url: str, space: str) -> dict:
    """The whole database, and the space's table and every relation named after it (`vec_2`, `vec_2_…`) with
    their indexes. A layout without `spaces.table_name` still gets the total."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        total, shared_buffers = conn.execute(
            "SELECT pg_database_size(current_database()), current_setting('shared_buffers')").fetchone()
        parts: dict[str, float] = {}
        try:
            (table,) = conn.execute("SELECT table_name FROM spaces WHERE name = %s", (space,)).fetchone()
        except (psycopg.Error, TypeError):
            table = None
        if table:
            rows = conn.execute(
                "SELECT c.relname, c.relkind, CASE WHEN c.relkind = 'i' THEN pg_relation_size(c.oid) "
                "ELSE pg_table_size(c.oid) END FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'i', 'm') "
                "AND (c.relname ~ %s OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid IN "
                "(SELECT oid FROM pg_class WHERE relname ~ %s))) ORDER BY c.relname",
                (f"^{table}($|_)", f"^{table}($|_)")).fetchall()
            parts = {f"{'index' if kind == 'i' else 'table'} {name}": round(size / MB, 1) for name, kind, size in rows}
        graphs = conn.execute(  # the HNSW parameters each index was built with (pgvector's defaults: none given)
            "SELECT c.relname, coalesce(array_to_string(c.reloptions, ', '), 'defaults') FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
            "WHERE a.amname = 'hnsw' AND i.indrelid = to_regclass(%s) ORDER BY 1", (table,)).fetchall() if table else []
    return {"total_mb": round(total / MB, 1), "parts": parts, "shared_buffers": shared_buffers, "hnsw": dict(graphs)}
