"""Model sources written for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path


def model_dir(root: Path, name: str, source: str) -> Path:
    """A new directory ``root/name`` holding ``predict.py`` with ``source``."""
    directory = root / name
    directory.mkdir()
    (directory / "predict.py").write_text(source)
    return directory
