"""The soak's ``jobtrack`` processes: workers, the monitor and the server,
each a real subprocess with its output in a log file of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]

__all__ = ["JobtrackProcess"]


@dataclass
class JobtrackProcess:
    """``jobtrack -v ARGS`` in ``env``: started, killed, stopped, restarted;
    ``exits`` holds the exit codes of the runs it was not told to end."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    exits: list[int] = field(default_factory=list)
    stopped: bool = False

    def start(self) -> None:
        """Start a new run (its output appended to the log); nothing while
        a run is still going (never two of one process)."""
        if self.running():
            return
        stream: IO[bytes] = self.log.open("ab")
        stream.write(f"--- start {self.starts + 1} at {time.time():.3f}\n".encode())
        stream.flush()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jobtrack", "-v", *self.args],
            stdout=stream,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=ROOT,
        )
        stream.close()
        self.starts += 1
        self.stopped = False

    @property
    def pid(self) -> int:
        """The running process's id."""
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        """Started and not exited."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL (after a SIGCONT, in case it was stopped), then reap it
        (not an exit by itself: nothing records it)."""
        assert self.process is not None
        if self.stopped:
            self.cont()
        self.process.kill()
        self.process.wait()
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: the process holds what it holds and does nothing."""
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped = True

    def cont(self) -> None:
        """SIGCONT after :meth:`pause`."""
        os.kill(self.pid, signal.SIGCONT)
        self.stopped = False

    def exited_by_itself(self) -> int | None:
        """The exit code of a run that ended without being told to (recorded
        in ``exits``), else None."""
        if self.process is None or self.process.poll() is None:
            return None
        code = self.process.returncode
        self.exits.append(code)
        self.process = None
        return code

    def terminate(self, within: float = 60) -> int | None:
        """SIGTERM and wait (SIGKILL past ``within``); its exit code."""
        if self.process is None:
            return None
        if self.stopped:
            self.cont()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(within)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def tracebacks(self) -> int:
        """How many tracebacks its log holds."""
        return self.log.read_text(errors="replace").count("Traceback")
