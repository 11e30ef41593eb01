"""The progress lines an operator reads: every N items of a stage, and its end."""

from __future__ import annotations

import logging

from jobtrack.model import Stage

__all__ = ["ProgressLog"]

logger = logging.getLogger("jobtrack.tracking")

_MAX_TRACKED_STAGES = 10_000


class ProgressLog:
    """Logs a line each time a stage's counted items pass a multiple of
    ``every``, and one when the stage ends."""

    def __init__(self, every: int = 50) -> None:
        self._every = every
        self._seen: dict[tuple[str, str], int] = {}

    def counted(self, job_id: str, stage: Stage, items: int) -> None:
        """``items`` of ``stage`` were just counted; ``stage`` is as after them."""
        key = (job_id, stage.name)
        if stage.status.terminal:
            self._seen.pop(key, None)
            logger.info(
                "job %s stage %s finished: %d completed, %d failed of %d",
                job_id,
                stage.name,
                stage.completed_items,
                stage.failed_items,
                stage.total_items,
                extra={"action": "stage_finished", "job_id": job_id, "stage": stage.name},
            )
            return
        if len(self._seen) >= _MAX_TRACKED_STAGES and key not in self._seen:
            self._seen.clear()  # stages that never finish must not grow this forever
        before = self._seen.get(key, 0)
        self._seen[key] = after = before + items
        if after // self._every > before // self._every:
            logger.info(
                "job %s stage %s: %d/%d items (%d failed)",
                job_id,
                stage.name,
                stage.done_items,
                stage.total_items,
                stage.failed_items,
                extra={"action": "progress", "job_id": job_id, "stage": stage.name},
            )
