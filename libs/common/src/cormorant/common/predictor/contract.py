"""The predict contract: what a user names (file, function, options) and the errors it can raise."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cormorant.common.errors import BadRequest, PayloadTooLarge, PredictError

# 10 MiB: a generous image or audio clip, small enough that a replica's memory is safe.
DEFAULT_MAX_FILE_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PredictorSpec:
    """Where a model's predict (and optional preprocess) function lives and how it is called."""

    source: Path
    """Directory holding the user's code; sibling modules import from it."""

    file: str
    """File name of predict, relative to ``source`` (e.g. ``predict.py``)."""

    function: str = "predict"
    """Name of the predict function in ``file``."""

    preprocess_file: str | None = None
    """File of the preprocess function; ``file`` when only a function name is given."""

    preprocess_function: str | None = None
    """Name of the preprocess function; no preprocess step when ``None``."""

    accepts_file: bool = False
    """The input is a Base64 string, decoded to a temporary file whose path is passed."""

    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    """Largest decoded file accepted when ``accepts_file`` is set."""


class ContractError(BadRequest):
    """The named file or function cannot serve as a predict function."""

    code = "invalid_predict_function"


class InvalidFileName(ContractError):
    """The file name cannot be imported by Python."""

    code = "invalid_file_name"

    def __init__(self, file_name: str, reason: str) -> None:
        super().__init__(f"file {file_name!r}: {reason}", details={"file": file_name})
        self.file_name = file_name


class SourceFileNotFound(ContractError):
    """The named file does not exist in the source directory."""

    code = "file_not_found"

    def __init__(self, file_name: str, source: Path) -> None:
        super().__init__(
            f"file {file_name!r} not found in {str(source)!r}",
            details={"file": file_name, "source": str(source)},
        )
        self.file_name = file_name


class FileOutsideSource(ContractError):
    """The named file resolves to a path outside the source directory."""

    code = "file_outside_source"

    def __init__(self, file_name: str, source: Path) -> None:
        super().__init__(
            f"file {file_name!r} is outside the source directory {str(source)!r}",
            details={"file": file_name, "source": str(source)},
        )
        self.file_name = file_name


class FunctionNotFound(ContractError):
    """The file imports but has no attribute of the named function."""

    code = "function_not_found"

    def __init__(self, function: str, file_name: str, available: list[str]) -> None:
        hint = f"; functions defined there: {', '.join(available)}" if available else ""
        super().__init__(
            f"file {file_name!r} has no function {function!r}{hint}",
            details={"file": file_name, "function": function},
        )
        self.function = function


class NotCallable(ContractError):
    """The named attribute exists but cannot be called."""

    code = "not_callable"

    def __init__(self, function: str, file_name: str, kind: str) -> None:
        super().__init__(
            f"{function!r} in {file_name!r} is a {kind}, not a function",
            details={"file": file_name, "function": function},
        )
        self.function = function


class ModelImportError(ContractError):
    """Importing the user's file raised; the message carries the exception type and text."""

    code = "import_failed"

    def __init__(self, file_name: str, exc: BaseException) -> None:
        self.exception_type = type(exc).__name__
        self.exception_message = str(exc)
        super().__init__(
            f"importing {file_name!r} failed: {self.exception_type}: {self.exception_message}",
            details={"file": file_name, "exception_type": self.exception_type},
        )


class InvalidInput(BadRequest):
    """The request's input cannot be passed to the function (e.g. bad Base64)."""

    code = "invalid_input"


class ArgumentsDoNotFit(InvalidInput):
    """The input's values do not bind to the function's parameters: the caller's mistake."""

    code = "arguments_do_not_fit"

    def __init__(self, stage: str, function: Callable[..., Any], reason: str) -> None:
        shown = describe_signature(function)
        super().__init__(
            f"the input does not fit {stage}{shown}: {reason}; send one value per parameter "
            "(a list is spread as positional arguments)",
            details={"stage": stage, "signature": shown},
        )


class FileTooLarge(PayloadTooLarge):
    """The decoded input file exceeds the configured limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the input file is {size} bytes; the limit is {limit} bytes",
            details={"size": size, "limit": limit},
        )


class FunctionRaised(PredictError):
    """The user's preprocess or predict function raised; 500 with its type and message."""

    def __init__(self, stage: str, exc: BaseException) -> None:
        self.stage = stage
        self.exception_type = type(exc).__name__
        self.exception_message = str(exc)
        text = self.exception_type
        if self.exception_message:
            text = f"{text}: {self.exception_message}"
        details: dict[str, Any] = {"stage": stage, "exception_type": self.exception_type}
        super().__init__(text if stage == "predict" else f"{stage} raised {text}", details=details)


def signature_of(function: Callable[..., Any]) -> inspect.Signature | None:
    """The function's signature, or None when Python cannot tell it (some builtins)."""
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):
        return None


def describe_signature(function: Callable[..., Any]) -> str:
    """``(a, b, c=1)`` of the function, or ``(...)`` when it cannot be read."""
    signature = signature_of(function)
    if signature is None:
        return "(...)"
    plain = signature.replace(
        parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
        return_annotation=signature.empty,
    )
    return str(plain)


def check_binding(
    function: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any], stage: str
) -> None:
    """Raise :class:`ArgumentsDoNotFit` if the arguments do not bind to the signature."""
    signature = signature_of(function)
    if signature is None:
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise ArgumentsDoNotFit(stage, function, str(exc)) from None


def check_file_name(file_name: str) -> None:
    """Refuse a file name Python cannot import as a module."""
    name = Path(file_name).name
    if "-" in name:
        suggestion = name.replace("-", "_")
        raise InvalidFileName(
            file_name,
            f"rename it, e.g. {suggestion}: Python cannot import a module whose name has '-'",
        )
    if not name.endswith(".py"):
        raise InvalidFileName(file_name, "a predict file must be a Python file ending in .py")
    if not name[:-3].isidentifier():
        raise InvalidFileName(
            file_name, "the name before .py must be a valid Python identifier (letters, digits, _)"
        )


def resolve_source_file(source: Path, file_name: str) -> Path:
    """The absolute path of ``file_name`` inside ``source``, after the contract's checks."""
    check_file_name(file_name)
    root = source.resolve()
    path = (root / file_name).resolve()
    if not path.is_relative_to(root):
        raise FileOutsideSource(file_name, root)
    if not path.is_file():
        raise SourceFileNotFound(file_name, root)
    return path


def check_spec(spec: PredictorSpec) -> None:
    """The checks that need no import: file names, files present, options consistent."""
    if spec.preprocess_file and not spec.preprocess_function:
        raise ContractError(
            f"a preprocess file ({spec.preprocess_file!r}) needs a preprocess function name"
        )
    resolve_source_file(spec.source, spec.file)
    if spec.preprocess_function and spec.preprocess_file:
        resolve_source_file(spec.source, spec.preprocess_file)
    if spec.max_file_bytes <= 0:
        raise ContractError("max_file_bytes must be positive")
