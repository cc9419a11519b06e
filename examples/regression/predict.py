"""Diabetes progression one year on, from ten standardised features.

Input as entered: ``[[f1, ..., f10]]`` (one row), ``[[[...], [...]]]`` (several rows) or
``[f1, ..., f10]`` (ten arguments). One row gives a number, several rows a list of numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np

MODEL = joblib.load(Path(__file__).resolve().parent / "model.joblib")
N_FEATURES = int(MODEL.n_features_in_)


def predict(*values: Any) -> float | list[float]:
    """The predicted progression for one row, or for each of several rows."""
    rows = np.asarray(values[0] if len(values) == 1 else values, dtype=float)
    single = rows.ndim == 1
    rows = rows.reshape(1, -1) if single else rows
    if rows.ndim != 2 or rows.shape[1] != N_FEATURES:
        raise ValueError(f"expected rows of {N_FEATURES} numbers, got shape {rows.shape}")
    predictions = MODEL.predict(rows)
    return round(float(predictions[0]), 3) if single else [round(float(p), 3) for p in predictions]
