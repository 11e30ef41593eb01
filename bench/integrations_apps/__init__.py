"""Worker apps of the integrations benchmark (``bench/integrations.py``).

Each module builds its framework's app from the environment on first use of
a module attribute, so importing one connects to nothing:

- ``JOBTRACK_BENCH_MODE``: ``bare`` (no tracking), ``tracked`` (jobtrack's
  integration installed), ``chord`` (Celery only: results kept for a chord);
- ``JOBTRACK_BENCH_QUEUE``: the run's queue;
- ``JOBTRACK_BENCH_PREFIX``: the run's Redis key prefix (the probe's keys and,
  on Celery, the transport's and the result backend's keys);
- ``JOBTRACK_BENCH_ITEMS``: the run's number of tasks;
- ``JOBTRACK_STORE_URL`` / ``JOBTRACK_DATA_DIR``: the jobtrack store.

Every task, tracked or not, runs :func:`probe` and nothing else.
"""
