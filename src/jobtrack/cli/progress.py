"""Live per-stage progress bars for a job, drawn with Rich."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from jobtrack.model import Job

__all__ = ["JobProgress"]


class _RateColumn(ProgressColumn):
    """Items per second, from Rich's own speed estimate."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("     - it/s" if speed is None else f"{speed:6.1f} it/s", style="cyan")


class _FailedColumn(ProgressColumn):
    """How many items of the stage failed."""

    def render(self, task: Task) -> Text:
        failed = int(task.fields.get("failed", 0))
        return Text(f"{failed} failed", style="red" if failed else "dim")


class JobProgress:
    """One bar per stage: items, rate, ETA and failures; fed with job snapshots."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            _FailedColumn(),
            _RateColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> JobProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, job: Job) -> None:
        """Show the job's counts as they are now."""
        for name, stage in job.stages.items():
            if name not in self._tasks:
                self._tasks[name] = self._progress.add_task(
                    name, total=None, failed=0, status=stage.status.value
                )
            total = stage.total_items if stage.total_final or stage.total_items else None
            self._progress.update(
                self._tasks[name],
                completed=stage.done_items,
                total=total,
                failed=stage.failed_items,
                status=stage.status.value,
            )
