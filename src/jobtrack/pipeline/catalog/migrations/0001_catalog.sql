-- The reference application's catalog: collections, images, artifacts.
-- Times are integer microseconds since the Unix epoch, UTC.

CREATE TABLE collections (
    id         TEXT PRIMARY KEY,
    root       TEXT NOT NULL UNIQUE,
    job_id     TEXT,
    created_at INTEGER NOT NULL
);

CREATE TABLE images (
    id            TEXT PRIMARY KEY,
    collection_id TEXT NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    relpath       TEXT NOT NULL,
    size          INTEGER NOT NULL,
    mtime_ns      INTEGER NOT NULL,
    job_id        TEXT NOT NULL,
    present       INTEGER NOT NULL DEFAULT 1,
    UNIQUE (collection_id, relpath)
);

CREATE INDEX idx_images_job ON images (collection_id, job_id);

CREATE TABLE artifacts (
    image_id        TEXT NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    kind            TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    variant         TEXT NOT NULL,
    source_size     INTEGER NOT NULL,
    source_mtime_ns INTEGER NOT NULL,
    produced_at     INTEGER NOT NULL,
    path            TEXT,
    error           TEXT,
    width           INTEGER,
    height          INTEGER,
    PRIMARY KEY (image_id, kind)
) WITHOUT ROWID;
