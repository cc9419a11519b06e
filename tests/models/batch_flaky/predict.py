"""A predict that raises on 1% of rows (``x % 100 == 7``), for batch jobs' error column."""


def predict(x: int, y: int) -> int:
    """``x * y``, or ValueError for one row in a hundred."""
    if x % 100 == 7:
        raise ValueError(f"row {x} is unlucky")
    return x * y
