-- Worker heartbeats numbered (store/workers.py): the last beat sequence
-- number written, so a beat written again after a failure the worker saw
-- (the write committed, the answer lost) adds its counts once.
ALTER TABLE workers ADD COLUMN beat_seq integer NOT NULL DEFAULT 0;
