"""HTTP routes only: each module translates requests into calls of one feature's service."""
