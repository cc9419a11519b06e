"""Rebuild model.joblib: iris species from three measurements, on scikit-learn's iris data.

The iris data ships inside scikit-learn, so nothing is downloaded. Deterministic.
"""

from __future__ import annotations

from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

HERE = Path(__file__).resolve().parent
# sepal length, petal length, petal width (cm): the three arguments of predict.
COLUMNS = [0, 2, 3]


def main() -> None:
    """Fit on the 150 flowers and write the model next to predict.py."""
    iris = load_iris()
    model = LogisticRegression(max_iter=1000).fit(iris.data[:, COLUMNS], iris.target)
    model.species_ = [str(name) for name in iris.target_names]
    joblib.dump(model, HERE / "model.joblib", compress=3)
    print(f"accuracy {model.score(iris.data[:, COLUMNS], iris.target):.3f}")


if __name__ == "__main__":
    main()
