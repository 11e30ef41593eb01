"""The HTTP API and the live dashboard (``jobtrack serve``)."""

from jobtrack.api.app import create_app
from jobtrack.api.config import ApiConfig

__all__ = ["ApiConfig", "create_app"]
