-- The reference application's catalog: collections, images, artifacts.

CREATE TABLE collections (
    id         text PRIMARY KEY,
    root       text NOT NULL UNIQUE,
    job_id     text,
    created_at timestamptz NOT NULL
);

CREATE TABLE images (
    id            text PRIMARY KEY,
    collection_id text NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    relpath       text NOT NULL,
    size          bigint NOT NULL,
    mtime_ns      bigint NOT NULL,
    job_id        text NOT NULL,
    present       boolean NOT NULL DEFAULT true,
    UNIQUE (collection_id, relpath)
);

CREATE INDEX idx_images_job ON images (collection_id, job_id);

CREATE TABLE artifacts (
    image_id        text NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    kind            text NOT NULL,
    status          text NOT NULL CHECK (status IN ('ok', 'failed')),
    variant         text NOT NULL,
    source_size     bigint NOT NULL,
    source_mtime_ns bigint NOT NULL,
    produced_at     timestamptz NOT NULL,
    path            text,
    error           text,
    width           integer,
    height          integer,
    PRIMARY KEY (image_id, kind)
);
