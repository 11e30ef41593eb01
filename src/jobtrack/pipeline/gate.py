"""The job gate, kept here for the collection scan: it lives in
:mod:`jobtrack.jobs.gate`, shared by every job type's consumers."""

from jobtrack.jobs.gate import JobGate

__all__ = ["JobGate"]
