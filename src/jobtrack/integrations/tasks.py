"""What an integration records of a framework's task, and what travels with it.

A task sent as an item of a jobtrack job has two parts here:

- :class:`TaskCall`, its ledger payload: the task's name, its args, kwargs
  and the framework's send options (JSON), and the framework id it is sent
  with, so that the monitor can send exactly that task again;
- :class:`TaskRef`, what travels with the task (a Celery header, a Dramatiq
  message option, an RQ job's meta, an arq job's id): the job, the stage and
  the item's key, which the worker side counts the task's end under.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from jobtrack.errors import InvalidRequest
from jobtrack.jobs.messages import MAX_FIELD_LENGTH
from jobtrack.store.ledger import encode_payload
from jobtrack.store.text import key_problem, text_problem

__all__ = ["HEADER", "TaskCall", "TaskRef", "new_task_id"]

logger = logging.getLogger(__name__)

#: The name of the header (or option, or meta field) that carries a :class:`TaskRef`.
HEADER = "jobtrack"


def new_task_id() -> str:
    """A fresh framework task id (a UUID4, as Celery, Dramatiq and RQ make them)."""
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class TaskCall:
    """A task as the ledger keeps it: enough to send it again.

    :param task: the framework's name of the task (Celery's registered name,
        Dramatiq's actor, RQ's function path, arq's function name).
    :param args: positional arguments (JSON values).
    :param kwargs: keyword arguments (JSON values).
    :param options: the framework's send options (a queue, a priority...),
        JSON values, passed back as they are.
    :param task_id: the framework's id of the task, the same at every send
        (empty: the item's key is the id).
    """

    task: str
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    task_id: str = ""

    def payload(self) -> dict[str, Any]:
        """The ledger payload: ``{"task", "args", "kwargs", "options", "id"}``.

        :raises InvalidRequest: an argument or option that is not JSON.
        """
        payload = {
            "task": self.task,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "options": dict(self.options),
            "id": self.task_id,
        }
        encode_payload(payload)  # refuses what the ledger cannot keep, with the reason
        return payload

    @classmethod
    def from_payload(cls, payload: Any) -> TaskCall:
        """The task a ledger payload records.

        :raises InvalidRequest: the payload is not one :meth:`payload` makes.
        """
        if not isinstance(payload, dict) or not isinstance(payload.get("task"), str):
            raise InvalidRequest(f"not a task's ledger payload: {_clip(payload)}")
        args, kwargs = payload.get("args", []), payload.get("kwargs", {})
        options, task_id = payload.get("options", {}), payload.get("id", "")
        if not (
            isinstance(args, list)
            and isinstance(kwargs, dict)
            and isinstance(options, dict)
            and isinstance(task_id, str)
        ):
            raise InvalidRequest(f"not a task's ledger payload: {_clip(payload)}")
        return cls(payload["task"], tuple(args), kwargs, options, task_id)

    def id_for(self, key: str) -> str:
        """The framework id to send the task with: its own, else the key."""
        return self.task_id or key


@dataclass(frozen=True, slots=True)
class TaskRef:
    """Which item of which job a task is: what the worker side counts under."""

    job_id: str
    stage: str
    key: str

    def header(self) -> dict[str, str]:
        """The value to send with the task under :data:`HEADER`."""
        return {"job": self.job_id, "stage": self.stage, "key": self.key}

    @classmethod
    def from_header(cls, value: Any) -> TaskRef | None:
        """The reference a task carries; None when it carries none (a task
        not sent as an item) or one that is malformed (logged: the task runs
        on, uncounted, and the monitor sends it again if it is missing).

        Well formed is what an item message holds: a job id and a stage of 1
        to :data:`~jobtrack.jobs.messages.MAX_FIELD_LENGTH` characters and a
        key, each text every store can keep (no NUL, no lone surrogate).
        Raises nothing, whatever ``value`` is.
        """
        if value is None:
            return None
        if isinstance(value, str):  # a framework that keeps headers as text
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):  # not JSON, or nested past the limit
                value = None
        if isinstance(value, dict):
            job_id, stage, key = value.get("job"), value.get("stage"), value.get("key")
            if (
                _storable(job_id, "job")
                and _storable(stage, "stage")
                and isinstance(key, str)
                and key_problem(key) is None
            ):
                return cls(job_id, stage, key)
        logger.warning(
            "a task's %s reference is malformed, not counted: %s",
            HEADER,
            _clip(value),
            extra={"action": "task_ref_malformed"},
        )
        return None


def _storable(value: object, what: str) -> TypeGuard[str]:
    """Whether ``value`` is a job id or stage name an item message could hold."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_FIELD_LENGTH
        and text_problem(value, what) is None
    )


def _clip(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # nested past the recursion limit, or a __repr__ that fails
        text = f"<a {type(value).__name__} that cannot be shown>"
    return text if len(text) <= 200 else text[:197] + "..."
