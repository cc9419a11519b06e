"""A predict that raises on 1% of rows (``x % 100 == 7``) and logs ``row_x`` for the others."""

from cormorant.sdk import log_metric


def predict(x: int, y: int) -> int:
    """``x * y``, or ValueError for one row in a hundred."""
    if x % 100 == 7:
        raise ValueError(f"row {x} is unlucky")
    log_metric("row_x", x)
    return x * y
