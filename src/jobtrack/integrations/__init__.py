"""Tasks of Celery, Dramatiq, arq and RQ as the items of jobtrack jobs.

Each framework has a module here (``jobtrack.integrations.celery``...,
with the extra of the same name) that gives the tasks a team already has
what the framework lacks: exact per-stage progress, each task counted once
whatever the redeliveries, and the fallback monitor, which tells stuck from
slow and sends again exactly the tasks that were lost.

The parts they share:

- :class:`~jobtrack.integrations.tasks.TaskCall`: a task as the item ledger
  keeps it, enough to send it again;
- :class:`~jobtrack.integrations.tasks.TaskRef`: which item of which job a
  task is, sent with it;
- :class:`~jobtrack.integrations.counter.TaskCounter`: the worker side's
  coalesced counts, written by a thread of its own;
- :class:`~jobtrack.integrations.counter_process.CounterProcess`: the same,
  written by a process of its own (for a worker that forks per task).
"""

from jobtrack.integrations.counter import TaskCounter
from jobtrack.integrations.tasks import HEADER, TaskCall, TaskRef

__all__ = ["HEADER", "TaskCall", "TaskCounter", "TaskRef"]
