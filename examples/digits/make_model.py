"""Rebuild model.joblib and samples/*.png from scikit-learn's 8x8 handwritten digits.

The digits ship inside scikit-learn, so nothing is downloaded. The samples are held-out
digits (one per class) drawn white on black at 32x32, as a user would upload them.
Deterministic.
"""

from __future__ import annotations

import sys
from pathlib import Path

import joblib
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

HERE = Path(__file__).resolve().parent
SIZE = 32
HELD_OUT = 300


def to_png(pixels: np.ndarray, path: Path) -> None:
    """Write an 8x8 digit (values 0..16) as a 32x32 grayscale PNG."""
    image = Image.fromarray((pixels.reshape(8, 8) * (255 / 16)).round().astype(np.uint8), "L")
    image.resize((SIZE, SIZE), Image.Resampling.NEAREST).save(path, optimize=True)


def main() -> None:
    """Fit on all but the last digits, keep one correctly read held-out sample per class."""
    digits = load_digits()
    train_x, train_y = digits.data[:-HELD_OUT], digits.target[:-HELD_OUT]
    test_x, test_y = digits.data[-HELD_OUT:], digits.target[-HELD_OUT:]
    model = LogisticRegression(max_iter=5000).fit(train_x, train_y)
    joblib.dump(model, HERE / "model.joblib", compress=3)
    print(f"held-out accuracy {model.score(test_x, test_y):.3f}")
    sys.path.insert(0, str(HERE))
    from predict import read_digit  # the exact decoding predict uses

    samples = HERE / "samples"
    samples.mkdir(exist_ok=True)
    for digit in range(10):
        for pixels, label in zip(test_x, test_y, strict=True):
            path = samples / f"digit_{digit}.png"
            if label != digit:
                continue
            to_png(pixels, path)
            if model.predict(read_digit(path))[0] == digit:
                break
        else:
            raise SystemExit(f"no held-out {digit} is read correctly")


if __name__ == "__main__":
    main()
