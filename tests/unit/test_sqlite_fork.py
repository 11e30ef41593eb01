"""A process forked while its SQLite database is in the middle of a write
(a TaskCounter's thread flushing while Celery's prefork pool or RQ forks)
can write to the same file: the fork waits for the write to end, so the
child inherits no lock state that nobody would release."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from jobtrack.store.sqlite.database import SqliteDatabase


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_during_a_write_transaction_can_write(tmp_path: Path) -> None:
    path = tmp_path / "forked.db"
    database = SqliteDatabase(path, busy_timeout_ms=2_000)
    database.connection.execute("CREATE TABLE marks (who TEXT)")
    started = threading.Event()

    def long_write() -> None:
        with database.write() as connection:
            connection.execute("INSERT INTO marks VALUES ('parent')")
            started.set()
            time.sleep(0.5)

    writing = database._submit(long_write)
    assert started.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: a database of its own on the same file
        code = 1
        try:
            child = SqliteDatabase(path, busy_timeout_ms=2_000)
            with child.write() as connection:
                connection.execute("INSERT INTO marks VALUES ('child')")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    writing.result(5)
    assert os.waitstatus_to_exitcode(status) == 0
    rows = database.call(lambda: database.connection.execute("SELECT who FROM marks").fetchall())
    assert sorted(row[0] for row in rows) == ["child", "parent"]
    database.close()
