"""Import a user's file as an isolated module and fetch a function from it."""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from cormorant.common.predictor.contract import (
    FunctionNotFound,
    ModelImportError,
    NotCallable,
    resolve_source_file,
)

# Serialises sys.path edits and module registration when several loads run in threads.
_lock = threading.Lock()
_sequence = itertools.count(1)


def import_user_file(source: Path, file_name: str) -> ModuleType:
    """Import ``file_name`` from ``source`` under a module name no other load uses."""
    path = resolve_source_file(source, file_name)
    root = str(path.parent)
    with _lock:
        # A unique name per load: two versions of ``predict.py`` never share a module object.
        module_name = f"cormorant_user_{next(_sequence)}_{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ModelImportError(
                file_name, ImportError(f"cannot build an import spec for {path}")
            )
        module = importlib.util.module_from_spec(spec)
        # The directory stays on sys.path: predict code often imports siblings lazily, at call time.
        if root not in sys.path:
            sys.path.insert(0, root)
        # Registered before execution so dataclasses, pickle and typing can find the module.
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            sys.modules.pop(module_name, None)
            raise ModelImportError(file_name, exc) from exc
    return module


def get_function(module: ModuleType, function: str, file_name: str) -> Callable[..., Any]:
    """The callable named ``function`` in ``module``, or a contract error saying what is wrong."""
    value = getattr(module, function, None)
    if value is None and not hasattr(module, function):
        raise FunctionNotFound(function, file_name, _defined_functions(module))
    if not callable(value):
        raise NotCallable(function, file_name, type(value).__name__)
    return value  # type: ignore[no-any-return]


def load_function(source: Path, file_name: str, function: str) -> Callable[..., Any]:
    """Import ``file_name`` from ``source`` and return its ``function``."""
    return get_function(import_user_file(source, file_name), function, file_name)


def _defined_functions(module: ModuleType) -> list[str]:
    return sorted(
        name
        for name, value in vars(module).items()
        if inspect.isfunction(value)
        and value.__module__ == module.__name__
        and not name.startswith("_")
    )
