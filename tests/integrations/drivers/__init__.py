"""One driver per framework for the integrations' contract (``contract.py``)."""
