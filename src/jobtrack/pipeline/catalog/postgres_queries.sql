-- Named queries of the PostgreSQL catalog; each begins with a "-- name: x" line.

-- name: ensure_collection
INSERT INTO collections (id, root, created_at) VALUES (%s, %s, %s)
ON CONFLICT (root) DO NOTHING;

-- name: collection_at
SELECT id, root, job_id, created_at FROM collections WHERE root = %s;

-- name: get_collection
SELECT id, root, job_id, created_at FROM collections WHERE id = %s;

-- name: swap_job
UPDATE collections SET job_id = %s WHERE id = %s AND job_id IS NOT DISTINCT FROM %s;

-- name: register_images
INSERT INTO images (id, collection_id, relpath, size, mtime_ns, job_id, present)
SELECT i, %(collection)s, r, s, m, %(job)s, true
FROM unnest(%(ids)s::text[], %(paths)s::text[], %(sizes)s::bigint[],
            %(mtimes)s::bigint[]) AS f (i, r, s, m)
ON CONFLICT (id) DO UPDATE SET size = excluded.size,
    mtime_ns = excluded.mtime_ns, job_id = excluded.job_id, present = true;

-- name: forget_unseen_artifacts
-- The images of the collection another job's scan saw, not this one's: their
-- artifacts forgotten, their paths returned.
DELETE FROM artifacts WHERE image_id IN (
    SELECT id FROM images
    WHERE collection_id = %(collection)s AND job_id <> %(job)s AND present)
RETURNING path;

-- name: retire_unseen
UPDATE images SET present = false WHERE id IN (
    SELECT id FROM images
    WHERE collection_id = %(collection)s AND job_id <> %(job)s AND present);

-- name: get_image
SELECT i.id, i.collection_id, i.relpath, i.size, i.mtime_ns, i.job_id, i.present
FROM images i WHERE i.id = %s;

-- name: record_artifact
INSERT INTO artifacts (image_id, kind, status, variant, source_size,
    source_mtime_ns, produced_at, path, error, width, height)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (image_id, kind) DO UPDATE SET status = excluded.status,
    variant = excluded.variant, source_size = excluded.source_size,
    source_mtime_ns = excluded.source_mtime_ns, produced_at = excluded.produced_at,
    path = excluded.path, error = excluded.error, width = excluded.width,
    height = excluded.height;

-- name: images
SELECT i.id, i.collection_id, i.relpath, i.size, i.mtime_ns, i.job_id, i.present
FROM images i WHERE i.id = ANY(%(ids)s) ORDER BY i.relpath;

-- name: artifacts
SELECT a.image_id, a.kind, a.status, a.variant, a.source_size, a.source_mtime_ns,
       a.produced_at, a.path, a.error, a.width, a.height
FROM artifacts a JOIN images i ON i.id = a.image_id
WHERE i.id = ANY(%(ids)s);

-- name: images_of_job
SELECT i.id, i.collection_id, i.relpath, i.size, i.mtime_ns, i.job_id, i.present
FROM images i WHERE i.collection_id = %(collection)s AND i.job_id = %(job)s
ORDER BY i.relpath;

-- name: artifacts_of_job
SELECT a.image_id, a.kind, a.status, a.variant, a.source_size, a.source_mtime_ns,
       a.produced_at, a.path, a.error, a.width, a.height
FROM artifacts a JOIN images i ON i.id = a.image_id
WHERE i.collection_id = %(collection)s AND i.job_id = %(job)s;
