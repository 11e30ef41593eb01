"""``python -m jobtrack``: the same as the ``jobtrack`` command."""

from jobtrack.cli.main import main

main()
