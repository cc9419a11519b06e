"""Flows: named lists of tasks (``exec``, ``deploy``, ``rollback``, ``batch-predict``) run in
order; every task but ``exec`` calls the public API through ``cormorant.sdk.Client``, ``exec``
runs in a contained process of its own (``exec.py``)."""
