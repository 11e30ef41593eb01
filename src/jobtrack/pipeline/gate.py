"""The job gate, kept here for the rendition consumers: it lives in
:mod:`jobtrack.jobs.gate`, shared by every job type's consumers."""

from jobtrack.jobs.gate import JobGate

__all__ = ["JobGate"]
