"""A batch-capable model with a fixed cost per call: ~1 ms of CPU, plus a little per row.

The cost holds the GIL, as a real model's per-call overhead (framework dispatch, feature
checks, allocating the batch) mostly does, so threads alone cannot hide it.
"""

import time

FIXED_S = 0.001
PER_ROW_S = 0.00002


def predict(rows):
    end = time.perf_counter() + FIXED_S + PER_ROW_S * len(rows)
    while time.perf_counter() < end:
        pass
    return [sum(row) for row in rows]
