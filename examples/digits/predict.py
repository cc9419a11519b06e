"""A handwritten digit image (PNG, white on black) → the digit.

The endpoint is deployed with "function accepts file as input": the request's input is the
image in Base64; the worker writes it to a temporary file and passes its path here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np
from PIL import Image

MODEL = joblib.load(Path(__file__).resolve().parent / "model.joblib")


def read_digit(path: str | Path) -> np.ndarray:
    """The image as the model's input: 8x8 grayscale, 0 (background) to 16 (ink), one row."""
    with Image.open(path) as image:
        small = image.convert("L").resize((8, 8), Image.Resampling.BOX)
    return (np.asarray(small, dtype=float) * (16 / 255)).reshape(1, 64)


def predict(path: str) -> dict[str, Any]:
    """The digit drawn in the image file at ``path`` and the model's probability for it."""
    probabilities = MODEL.predict_proba(read_digit(path))[0]
    best = int(probabilities.argmax())
    return {"digit": int(MODEL.classes_[best]), "probability": round(float(probabilities[best]), 4)}
