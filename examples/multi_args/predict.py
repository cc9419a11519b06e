"""Three arguments: ``predict(sepal_length, petal_length, petal_width)`` → iris species.

The input ``[5.1, 1.4, 0.2]`` is spread as the three positional arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib

MODEL = joblib.load(Path(__file__).resolve().parent / "model.joblib")


def predict(sepal_length: float, petal_length: float, petal_width: float) -> dict[str, Any]:
    """The most likely species and its probability."""
    probabilities = MODEL.predict_proba([[sepal_length, petal_length, petal_width]])[0]
    best = int(probabilities.argmax())
    return {"species": MODEL.species_[best], "probability": round(float(probabilities[best]), 4)}
