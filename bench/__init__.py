"""jobtrack's benchmarks; ``python -m bench`` runs them all."""
