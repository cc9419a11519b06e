"""Names, file paths and references of datasets, checked before anything touches storage."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cormorant.common.errors import BadRequest

MAX_NAME_LENGTH = 64
MAX_PATH_LENGTH = 1024

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_VERSION = re.compile(r"[0-9]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

REFERENCE_FORMS = "'<dataset>/<path>' (latest version) or '<dataset>@<version>/<path>'"


def validate_name(name: str) -> str:
    """``name`` if it is a valid dataset name, else ``BadRequest`` saying what to change."""
    if not name:
        raise BadRequest("dataset name is empty; use lowercase letters, digits, '-' and '_'")
    if len(name) > MAX_NAME_LENGTH:
        raise BadRequest(
            f"dataset name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}"
        )
    if not _NAME.fullmatch(name):
        raise BadRequest(
            f"dataset name {name!r} is invalid: use lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit (e.g. 'churn-inputs')"
        )
    return name


def validate_path(path: str) -> str:
    """``path`` if it is a safe relative file path inside a dataset, else ``BadRequest``."""
    if not path:
        raise BadRequest("file path is empty; give a relative path such as 'predictions.csv'")
    if len(path) > MAX_PATH_LENGTH:
        raise BadRequest(
            f"file path is {len(path)} characters long; the limit is {MAX_PATH_LENGTH}"
        )
    if "\x00" in path:
        raise BadRequest(f"file path {path!r} contains a NUL character; remove it")
    if _CONTROL.search(path):
        raise BadRequest(f"file path {path!r} contains a control character; remove it")
    if "\\" in path:
        raise BadRequest(f"file path {path!r} contains a backslash; separate directories with '/'")
    if path.startswith("/"):
        raise BadRequest(f"file path {path!r} must be relative: drop the leading '/'")
    segments = path.split("/")
    if ".." in segments:
        raise BadRequest(
            f"file path {path!r} must not contain '..'; name a file inside the dataset"
        )
    if "." in segments:
        raise BadRequest(f"file path {path!r} must not contain '.' segments; remove them")
    if "" in segments:
        raise BadRequest(
            f"file path {path!r} has an empty segment ('//' or a trailing '/'); "
            "name a file, e.g. 'out/predictions.csv'"
        )
    return path


@dataclass(frozen=True, slots=True)
class DatasetRef:
    """A file of a dataset as other features name it: ``dataset[@version]/path``."""

    dataset: str
    path: str
    version: int | None = None
    """The version number, or None for whichever version is the latest when resolved."""

    def __str__(self) -> str:
        at = "" if self.version is None else f"@{self.version}"
        return f"{self.dataset}{at}/{self.path}"


def parse_reference(reference: str) -> DatasetRef:
    """Parse ``<dataset>/<path>`` or ``<dataset>@<n>/<path>``; ``BadRequest`` if malformed."""
    head, slash, path = reference.partition("/")
    if not slash or not head:
        raise BadRequest(f"dataset reference {reference!r} must be {REFERENCE_FORMS}")
    name, at, number = head.partition("@")
    version: int | None = None
    if at:
        if not _VERSION.fullmatch(number) or int(number) < 1:
            raise BadRequest(
                f"dataset reference {reference!r} has version {number!r}; "
                "a version is a number from 1, as in 'sales@3/data.csv'"
            )
        version = int(number)
    return DatasetRef(validate_name(name), validate_path(path), version)
