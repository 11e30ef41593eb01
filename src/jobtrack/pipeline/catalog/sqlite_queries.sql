-- Named queries of the SQLite catalog; each begins with a "-- name: x" line.
-- Times are integer microseconds since the epoch; lists of ids are JSON arrays.

-- name: ensure_collection
INSERT INTO collections (id, root, created_at) VALUES (?, ?, ?)
ON CONFLICT (root) DO NOTHING;

-- name: collection_at
SELECT id, root, job_id, created_at FROM collections WHERE root = ?;

-- name: get_collection
SELECT id, root, job_id, created_at FROM collections WHERE id = ?;

-- name: swap_job
UPDATE collections SET job_id = ? WHERE id = ? AND job_id IS ?;

-- name: register_image
INSERT INTO images (id, collection_id, relpath, size, mtime_ns, job_id, present)
VALUES (?, ?, ?, ?, ?, ?, 1)
ON CONFLICT (id) DO UPDATE SET size = excluded.size,
    mtime_ns = excluded.mtime_ns, job_id = excluded.job_id, present = 1;

-- name: unseen_paths
-- The images of the collection another job's scan saw, not this one's
-- (?1 collection, ?2 job): the paths of their artifacts.
SELECT path FROM artifacts WHERE path IS NOT NULL AND image_id IN (
    SELECT id FROM images WHERE collection_id = ?1 AND job_id <> ?2 AND present = 1);

-- name: forget_unseen_artifacts
DELETE FROM artifacts WHERE image_id IN (
    SELECT id FROM images WHERE collection_id = ?1 AND job_id <> ?2 AND present = 1);

-- name: retire_unseen
UPDATE images SET present = 0 WHERE id IN (
    SELECT id FROM images WHERE collection_id = ?1 AND job_id <> ?2 AND present = 1);

-- name: get_image
SELECT i.id, i.collection_id, i.relpath, i.size, i.mtime_ns, i.job_id, i.present
FROM images i WHERE i.id = ?;

-- name: record_artifact
INSERT OR REPLACE INTO artifacts (image_id, kind, status, variant, source_size,
    source_mtime_ns, produced_at, path, error, width, height)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: images_of_job
SELECT i.id, i.collection_id, i.relpath, i.size, i.mtime_ns, i.job_id, i.present
FROM images i WHERE i.collection_id = ? AND i.job_id = ? ORDER BY i.relpath;

-- name: artifacts_of_job
SELECT a.image_id, a.kind, a.status, a.variant, a.source_size, a.source_mtime_ns,
       a.produced_at, a.path, a.error, a.width, a.height
FROM artifacts a JOIN images i ON i.id = a.image_id
WHERE i.collection_id = ? AND i.job_id = ?;

-- name: images
-- ?1 is a JSON array of image ids.
SELECT i.id, i.collection_id, i.relpath, i.size, i.mtime_ns, i.job_id, i.present
FROM images i WHERE i.id IN (SELECT value FROM json_each(?1));

-- name: artifacts
SELECT a.image_id, a.kind, a.status, a.variant, a.source_size, a.source_mtime_ns,
       a.produced_at, a.path, a.error, a.width, a.height
FROM artifacts a WHERE a.image_id IN (SELECT value FROM json_each(?1));
