"""Rebuild model.joblib: a ridge regression of diabetes progression on scikit-learn's data set.

The diabetes data ships inside scikit-learn, so nothing is downloaded. Deterministic.
"""

from __future__ import annotations

from pathlib import Path

import joblib
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge

HERE = Path(__file__).resolve().parent


def main() -> None:
    """Fit on all 442 patients and write the model next to predict.py."""
    features, target = load_diabetes(return_X_y=True)
    model = Ridge(alpha=0.1).fit(features, target)
    joblib.dump(model, HERE / "model.joblib", compress=3)
    print(f"fitted on {len(target)} rows; R^2 {model.score(features, target):.3f}")


if __name__ == "__main__":
    main()
