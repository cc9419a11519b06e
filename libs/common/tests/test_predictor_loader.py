"""Loading a user's predict function: isolation, and the contract's clear refusals."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cormorant.common.errors import BadRequest
from cormorant.common.predictor import (
    FileOutsideSource,
    FunctionNotFound,
    InvalidFileName,
    ModelImportError,
    NotCallable,
    Predictor,
    PredictorSpec,
    SourceFileNotFound,
    load_function,
)


def write(directory: Path, name: str, code: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(code)
    return path


def test_loads_the_named_function(tmp_path: Path) -> None:
    """The function named by file and function name is returned, ready to call."""
    write(tmp_path, "model.py", "def predict(x):\n    return x * 2\n")
    assert load_function(tmp_path, "model.py", "predict")(21) == 42


def test_two_versions_of_the_same_file_never_collide(tmp_path: Path) -> None:
    """Two versions with the same file name keep their own module and state."""
    write(tmp_path / "v1", "predict.py", "VERSION = 1\ndef predict():\n    return VERSION\n")
    write(tmp_path / "v2", "predict.py", "VERSION = 2\ndef predict():\n    return VERSION\n")
    first = load_function(tmp_path / "v1", "predict.py", "predict")
    second = load_function(tmp_path / "v2", "predict.py", "predict")
    assert (first(), second()) == (1, 2)
    assert first.__module__ != second.__module__


def test_sibling_modules_import(tmp_path: Path) -> None:
    """predict code can import modules that sit next to it, at import and at call time."""
    package = tmp_path / "pkg_sibling_case"
    write(package, "helpers_sibling_case.py", "def double(x):\n    return 2 * x\n")
    write(
        package,
        "main.py",
        "from helpers_sibling_case import double\n"
        "def predict(x):\n"
        "    import helpers_sibling_case\n"
        "    return double(x) + helpers_sibling_case.double(1)\n",
    )
    assert load_function(package, "main.py", "predict")(5) == 12
    sys.modules.pop("helpers_sibling_case", None)


def test_dash_in_file_name_is_refused_with_a_rename_hint(tmp_path: Path) -> None:
    """A file name with '-' is refused before import, suggesting the underscore spelling."""
    write(tmp_path, "my-model.py", "def predict():\n    return 1\n")
    with pytest.raises(InvalidFileName) as caught:
        load_function(tmp_path, "my-model.py", "predict")
    assert "rename it, e.g. my_model.py" in caught.value.message
    assert "Python cannot import a module whose name has '-'" in caught.value.message
    assert isinstance(caught.value, BadRequest)
    assert caught.value.code == "invalid_file_name"


def test_non_python_file_is_refused(tmp_path: Path) -> None:
    """Only .py files can hold a predict function."""
    with pytest.raises(InvalidFileName, match=r"\.py"):
        load_function(tmp_path, "model.txt", "predict")


def test_missing_file_is_refused(tmp_path: Path) -> None:
    """A file that does not exist is named in the error, with the source directory."""
    with pytest.raises(SourceFileNotFound, match=r"'absent\.py' not found"):
        load_function(tmp_path, "absent.py", "predict")


def test_file_outside_the_source_directory_is_refused(tmp_path: Path) -> None:
    """A path that escapes the source directory is refused even if the file exists."""
    write(tmp_path, "outside.py", "def predict():\n    return 1\n")
    (tmp_path / "src").mkdir()
    with pytest.raises(FileOutsideSource, match="outside the source directory"):
        load_function(tmp_path / "src", "../outside.py", "predict")


def test_missing_function_lists_what_the_file_defines(tmp_path: Path) -> None:
    """A wrong function name says which functions the file does define."""
    write(tmp_path, "model.py", "def predict_proba(x):\n    return x\ndef _private():\n    pass\n")
    with pytest.raises(FunctionNotFound) as caught:
        load_function(tmp_path, "model.py", "predict")
    assert caught.value.message == (
        "file 'model.py' has no function 'predict'; functions defined there: predict_proba"
    )
    assert caught.value.code == "function_not_found"


def test_non_callable_attribute_is_refused(tmp_path: Path) -> None:
    """A name bound to data rather than a function is refused with its type."""
    write(tmp_path, "model.py", "predict = 42\n")
    with pytest.raises(NotCallable, match=r"'predict' in 'model\.py' is a int, not a function"):
        load_function(tmp_path, "model.py", "predict")


def test_import_error_reports_type_and_message(tmp_path: Path) -> None:
    """An exception raised while importing the user's file is reported with type and text."""
    write(tmp_path, "model.py", "import not_a_module_anywhere_xyz\n")
    with pytest.raises(ModelImportError) as caught:
        load_function(tmp_path, "model.py", "predict")
    assert "ModuleNotFoundError: No module named 'not_a_module_anywhere_xyz'" in (
        caught.value.message
    )
    assert caught.value.exception_type == "ModuleNotFoundError"


def test_syntax_error_is_reported(tmp_path: Path) -> None:
    """A syntax error in the user's file is an import failure, not a crash of the loader."""
    write(tmp_path, "model.py", "def predict(:\n")
    with pytest.raises(ModelImportError, match="SyntaxError"):
        load_function(tmp_path, "model.py", "predict")


def test_predictor_loads_preprocess_from_another_file(tmp_path: Path) -> None:
    """The preprocess function may live in its own file; it runs before predict."""
    write(tmp_path, "model.py", "def predict(x):\n    return x + 1\n")
    write(tmp_path, "prep.py", "def prepare(x):\n    return x * 10\n")
    spec = PredictorSpec(
        source=tmp_path,
        file="model.py",
        preprocess_file="prep.py",
        preprocess_function="prepare",
    )
    predictor = Predictor.load(spec)
    assert predictor.predict(4).value == 41  # type: ignore[union-attr]


def test_predictor_preprocess_defaults_to_the_predict_file(tmp_path: Path) -> None:
    """With only a preprocess function name, it is looked up in the predict file."""
    write(
        tmp_path,
        "model.py",
        "def prep(x):\n    return [x, x]\ndef predict(a, b):\n    return a * b\n",
    )
    spec = PredictorSpec(source=tmp_path, file="model.py", preprocess_function="prep")
    assert Predictor.load(spec).predict(7).value == 49  # type: ignore[union-attr]


def test_preprocess_file_without_a_function_name_is_refused(tmp_path: Path) -> None:
    """Naming a preprocess file but no function is refused rather than silently ignored."""
    write(tmp_path, "model.py", "def predict(x):\n    return x\n")
    spec = PredictorSpec(source=tmp_path, file="model.py", preprocess_file="model.py")
    with pytest.raises(BadRequest, match="needs a preprocess function name"):
        Predictor.load(spec)
