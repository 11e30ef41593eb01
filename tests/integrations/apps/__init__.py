"""The apps of the integrations' tests: per framework, its tasks, its worker
configuration and the jobtrack App with the ``contract`` job type."""
