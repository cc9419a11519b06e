"""Sentiment of a sentence: ``predict("I love it")`` → ``{"label": "positive", "score": 0.9}``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib

# Loaded once per worker process, at import: every prediction reuses it.
MODEL = joblib.load(Path(__file__).resolve().parent / "model.joblib")


def predict(text: str) -> dict[str, Any]:
    """The sentence's label and the model's probability for it."""
    if not isinstance(text, str):
        raise TypeError(f"expected a sentence (a string), got {type(text).__name__}")
    probabilities = MODEL.predict_proba([text])[0]
    best = int(probabilities.argmax())
    return {"label": str(MODEL.classes_[best]), "score": round(float(probabilities[best]), 4)}
