"""The stores' schemas, as migrations: a store records its version and applies the steps after it on open."""

from ovembed.store.sqlite_sparse import per_space_impact_indexes

SQLITE_MIGRATIONS = [
    """
    CREATE TABLE documents (id TEXT PRIMARY KEY, metadata TEXT NOT NULL, updated_at REAL NOT NULL);
    CREATE TABLE chunks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        doc_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL, text TEXT NOT NULL, content_hash TEXT NOT NULL, metadata TEXT NOT NULL,
        UNIQUE (doc_id, seq));
    CREATE INDEX chunks_hash ON chunks(content_hash);
    CREATE TABLE spaces (
        name TEXT PRIMARY KEY, model_id TEXT NOT NULL, precision TEXT NOT NULL, dimension INTEGER NOT NULL,
        model_ref TEXT NOT NULL, sparse INTEGER NOT NULL, active INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL);
    CREATE UNIQUE INDEX spaces_one_active ON spaces(active) WHERE active = 1;
    CREATE TABLE vectors (
        space TEXT NOT NULL REFERENCES spaces(name) ON DELETE CASCADE,
        chunk_id INTEGER NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
        dense BLOB NOT NULL,
        PRIMARY KEY (space, chunk_id)) WITHOUT ROWID;
    CREATE INDEX vectors_chunk ON vectors(chunk_id);
    CREATE TABLE postings (
        space TEXT NOT NULL, token_id INTEGER NOT NULL, chunk_id INTEGER NOT NULL, weight REAL NOT NULL,
        PRIMARY KEY (space, token_id, chunk_id),
        FOREIGN KEY (space, chunk_id) REFERENCES vectors(space, chunk_id) ON DELETE CASCADE) WITHOUT ROWID;
    CREATE INDEX postings_chunk ON postings(space, chunk_id);
    CREATE TABLE checkpoints (job TEXT PRIMARY KEY, last_id INTEGER NOT NULL, done INTEGER NOT NULL,
                              updated_at REAL NOT NULL);
    """,
    # 2: a space is its model, not where the model was reached: the model files' fingerprint.
    "ALTER TABLE spaces ADD COLUMN fingerprint TEXT NOT NULL DEFAULT ''",
    # 3: a space's state, and the exact list of what each space still lacks (written with the chunks).
    """
    ALTER TABLE spaces ADD COLUMN state TEXT NOT NULL DEFAULT 'filling';
    UPDATE spaces SET state = 'active' WHERE active = 1;
    CREATE TABLE pending (
        space TEXT NOT NULL REFERENCES spaces(name) ON DELETE CASCADE,
        chunk_id INTEGER NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
        PRIMARY KEY (space, chunk_id)) WITHOUT ROWID;
    CREATE INDEX pending_chunk ON pending(chunk_id);
    INSERT INTO pending SELECT s.name, c.id FROM spaces s, chunks c
        WHERE NOT EXISTS (SELECT 1 FROM vectors v WHERE v.space = s.name AND v.chunk_id = c.id)
    """,
    # 4: a vector in a rowid table keeps its ~4 KB on one overflow page (a WITHOUT ROWID row keeps at most ~1 KB
    # inline, so a 1.5 KB vector took a whole 4 KB page for its rest); `seq` orders writes, so a process reads
    # only what is new in a space; `deletes` counts a space's deleted vectors. Postings are clustered per chunk
    # (deletes, re-scoring) and indexed by impact (the heaviest postings of a token first).
    """
    CREATE TABLE vectors_v4 (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        space TEXT NOT NULL REFERENCES spaces(name) ON DELETE CASCADE,
        chunk_id INTEGER NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
        dense BLOB NOT NULL,
        UNIQUE (space, chunk_id));
    INSERT INTO vectors_v4 (space, chunk_id, dense) SELECT space, chunk_id, dense FROM vectors ORDER BY space, chunk_id;
    CREATE TABLE postings_v4 (
        space TEXT NOT NULL, chunk_id INTEGER NOT NULL, token_id INTEGER NOT NULL, weight REAL NOT NULL,
        PRIMARY KEY (space, chunk_id, token_id),
        FOREIGN KEY (space, chunk_id) REFERENCES vectors(space, chunk_id) ON DELETE CASCADE) WITHOUT ROWID;
    INSERT INTO postings_v4 SELECT space, chunk_id, token_id, weight FROM postings ORDER BY space, chunk_id, token_id;
    DROP TABLE postings;
    DROP TABLE vectors;
    ALTER TABLE vectors_v4 RENAME TO vectors;
    ALTER TABLE postings_v4 RENAME TO postings;
    CREATE INDEX vectors_chunk ON vectors(chunk_id);
    CREATE INDEX vectors_space_seq ON vectors(space, seq);
    CREATE INDEX postings_impact ON postings(space, token_id, weight DESC);
    ALTER TABLE spaces ADD COLUMN deletes INTEGER NOT NULL DEFAULT 0;
    CREATE TRIGGER vectors_deleted AFTER DELETE ON vectors BEGIN
        UPDATE spaces SET deletes = deletes + 1 WHERE name = old.space;
    END;
    """,
    per_space_impact_indexes,  # 5: an impact index per sparse space, built when the space is (sqlite_sparse)
]


def statements(script: str) -> list[str]:
    """A migration step's statements (a trigger's body holds semicolons of its own)."""
    import sqlite3

    out, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending.strip())
            pending = ""
    return [s for s in [*out, pending.strip()] if s.rstrip(";").strip()]


def apply_sqlite_step(conn, step) -> None:
    """One SQLite migration step: its statements, or a callable for a step that looks at the data (schema 5)."""
    if callable(step):
        step(conn)
        return
    for statement in statements(step):
        conn.execute(statement)


POSTGRES_MIGRATIONS = [
    """
    CREATE TABLE documents (id text PRIMARY KEY, metadata jsonb NOT NULL, updated_at timestamptz NOT NULL);
    CREATE TABLE chunks (
        id bigserial PRIMARY KEY,
        doc_id text NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
        seq int NOT NULL, text text NOT NULL, content_hash text NOT NULL, metadata jsonb NOT NULL,
        UNIQUE (doc_id, seq));
    CREATE INDEX chunks_hash ON chunks(content_hash);
    CREATE SEQUENCE vector_tables;
    CREATE TABLE spaces (
        name text PRIMARY KEY, model_id text NOT NULL, precision text NOT NULL, dimension int NOT NULL,
        model_ref text NOT NULL, sparse bool NOT NULL, active bool NOT NULL DEFAULT false,
        table_name text NOT NULL UNIQUE DEFAULT 'vec_' || nextval('vector_tables'),
        created_at timestamptz NOT NULL DEFAULT clock_timestamp());
    CREATE UNIQUE INDEX spaces_one_active ON spaces(active) WHERE active;
    CREATE TABLE checkpoints (job text PRIMARY KEY, last_id bigint NOT NULL, done bigint NOT NULL,
                              updated_at timestamptz NOT NULL);
    """,
    # 2: a space is its model, not where the model was reached: the model files' fingerprint.
    "ALTER TABLE spaces ADD COLUMN fingerprint text NOT NULL DEFAULT ''",
    # 3: a space's state, and the exact list of what each space still lacks (written with the chunks). Spaces
    # from before are seeded by _migrate.
    """
    ALTER TABLE spaces ADD COLUMN state text NOT NULL DEFAULT 'filling';
    ALTER TABLE spaces ADD COLUMN seeded bool NOT NULL DEFAULT false;
    UPDATE spaces SET state = 'active' WHERE active;
    CREATE TABLE pending (
        space text NOT NULL,  -- no foreign key: dropping a space must not wait for the inserts in flight
        chunk_id bigint NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
        PRIMARY KEY (space, chunk_id));
    CREATE INDEX pending_chunk ON pending(chunk_id);
    """,
    # 4: lexical search reads postings by impact instead of scanning every sparsevec: each sparse space's postings,
    # from its stored weights (sparsevec text is {index:value,...}/dim with 1-based indices). Dense indexes on
    # `vector` stay, and are searched, until build_index replaces them (concurrently: minutes at 10M rows).
    r"""
    DO $$
    DECLARE t text;
    BEGIN
        FOR t IN SELECT table_name FROM spaces WHERE sparse LOOP
            EXECUTE format('CREATE TABLE %I (token_id int NOT NULL, weight real NOT NULL, chunk_id bigint NOT NULL)',
                           t || '_postings');
            EXECUTE format('INSERT INTO %I SELECT m[1]::int - 1, m[2]::real, v.chunk_id FROM %I v, '
                           'regexp_matches(v.sparse::text, ''(\d+):([^,}]+)'', ''g'') AS m '
                           'WHERE m[2]::real <> 0', t || '_postings', t);
            EXECUTE format('CREATE INDEX %I ON %I (token_id, weight DESC) INCLUDE (chunk_id)',
                           t || '_postings_impact', t || '_postings');
            EXECUTE format('CREATE INDEX %I ON %I (chunk_id)', t || '_postings_chunk', t || '_postings');
        END LOOP;
    END $$
    """,
]
