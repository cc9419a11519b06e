"""Shared library of every Cormorant service: settings, errors, contract, bus, database."""
