"""Checks of an endpoint request that need no worker: fields, replica bounds, the user's code.

The user's code is read with ``ast`` and never imported here: importing runs arbitrary
module-level code (model loading, downloads) inside the deployer.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cormorant.common.endpoints.kafka import MASK
from cormorant.common.endpoints.schemas import (
    EndpointCreate,
    EndpointSpec,
    ReplicasSpec,
    ResourcesSpec,
    ServerValue,
)
from cormorant.common.errors import BadRequest
from cormorant.common.predictor import InvalidFileName, check_file_name

_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class InvalidField(BadRequest):
    """A request field whose value cannot be used; the message starts with the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}", details={"field": field})
        self.field = field


def resolve_spec(
    request: EndpointCreate, *, default_target: float, default_timeout_s: float
) -> EndpointSpec:
    """The request with its defaults filled in, or ``InvalidField`` naming what to fix."""
    if request.kind == "stream":
        if request.kafka is None:
            raise InvalidField(
                "kafka",
                "a stream endpoint needs a kafka section: "
                '{"input_topics": ["..."], "output_topic": "..."} '
                "(CLI: cormorant stream deploy DIR --input-topic T --output-topic O)",
            )
    elif request.kafka is not None:
        raise InvalidField("kafka", "only stream endpoints take a kafka section; remove it")
    replicas = _replicas(request, default_target)
    _check_file_name("file", request.file)
    _check_identifier("function", request.function)
    if request.preprocess_file is not None:
        _check_file_name("preprocess_file", request.preprocess_file)
        if request.preprocess_function is None:
            raise InvalidField(
                "preprocess_function",
                "preprocess_file is set but no preprocess_function names the function to run",
            )
    if request.preprocess_function is not None:
        _check_identifier("preprocess_function", request.preprocess_function)
    for key in request.env:
        if _ENV_NAME_RE.fullmatch(key) is None:
            raise InvalidField(
                "env", f"{key!r} is not an environment variable name (letters, digits, _)"
            )
    server: dict[str, ServerValue] = {}
    for key, value in request.server.items():
        if not key.strip():
            raise InvalidField("server", "setting names must not be empty")
        server[key.strip()] = value
    return EndpointSpec(
        name=request.name.strip() or request.name,
        kind=request.kind,
        source=request.source,
        commit=request.commit,
        file=request.file,
        function=request.function,
        preprocess_file=request.preprocess_file,
        preprocess_function=request.preprocess_function,
        accepts_file=request.accepts_file,
        env=dict(request.env),
        server=server,
        replicas=replicas,
        timeout_s=request.timeout_s if request.timeout_s is not None else default_timeout_s,
        resources=ResourcesSpec(
            **{key: value for key, value in request.resources.model_dump().items() if value}
        ),
        # Checked against the broker, with its defaults, by streams.prepare_stream_spec.
        kafka=request.kafka if request.kind == "stream" else None,
    )


def changed_request(spec: EndpointSpec, given: dict[str, Any]) -> EndpointCreate:
    """The create request of ``spec`` with the fields ``given`` changed (``replicas``,
    ``resources`` and ``kafka`` merged into the spec's own); a 400 naming each invalid field."""
    fields = spec.to_request()
    for name, value in given.items():
        if name in ("replicas", "resources"):
            # Merged into the spec's own, so a rerun keeps what it does not override.
            if value is not None:
                fields[name] = {**fields[name], **value}
        elif name == "kafka" and isinstance(value, dict) and isinstance(fields["kafka"], dict):
            fields["kafka"] = merged_kafka(fields["kafka"], value)
        else:
            fields[name] = value
    try:
        return EndpointCreate.model_validate(fields)
    except ValidationError as exc:
        raise BadRequest(
            "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
                for err in exc.errors()
            )
        ) from exc


def merged_kafka(stored: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``stored`` with the keys of ``given``; an absent ``security`` keeps the stored one.

    Secrets come back from the API masked, so a rerun cannot resend them: a security value
    given as the mask keeps the stored value, and one given as ``{}`` clears them all.
    """
    merged = {**stored, **given}
    security, kept = given.get("security"), stored.get("security")
    if isinstance(security, dict) and isinstance(kept, dict):
        merged["security"] = {
            key: kept.get(key, value) if value == MASK else value for key, value in security.items()
        }
    return merged


def _replicas(request: EndpointCreate, default_target: float) -> ReplicasSpec:
    given = request.replicas
    if request.kind == "batch":
        low = 0 if given.min is None else given.min
        if low > 0:
            raise InvalidField(
                "replicas.min",
                f"a batch endpoint rests at 0 replicas and scales up for its jobs; "
                f"leave min unset or 0 (got {low})",
            )
    else:
        low = 1 if given.min is None else given.min
        if low < 1:
            raise InvalidField(
                "replicas.min",
                f"a {request.kind} endpoint needs at least 1 replica; set min ≥ 1 (got {low})",
            )
    high = max(low, 1) if given.max is None else given.max
    if low > high:
        raise InvalidField(
            "replicas", f"min ({low}) is greater than max ({high}); make max at least min"
        )
    target = default_target if given.target is None else given.target
    return ReplicasSpec(min=low, max=high, target=target)


def _check_file_name(field: str, name: str) -> None:
    try:
        check_file_name(name)
    except InvalidFileName as exc:
        raise InvalidField(field, exc.message) from exc


def _check_identifier(field: str, name: str) -> None:
    if not name.isidentifier():
        raise InvalidField(field, f"{name!r} is not a Python function name")


def check_code(directory: Path, spec: EndpointSpec, *, shown_source: str) -> None:
    """Refuse a spec whose files are missing or whose functions are not defined in them."""
    module = _parse(directory, "file", spec.file, shown_source)
    _check_defined(module, "function", spec.function, spec.file)
    if spec.preprocess_function is not None:
        pre_file = spec.preprocess_file or spec.file
        pre_module = (
            module
            if pre_file == spec.file
            else _parse(directory, "preprocess_file", pre_file, shown_source)
        )
        _check_defined(pre_module, "preprocess_function", spec.preprocess_function, pre_file)


def _parse(directory: Path, field: str, name: str, shown_source: str) -> ast.Module:
    root = directory.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise InvalidField(field, f"{name!r} is outside the source directory")
    if not path.is_file():
        present = sorted(p.name for p in root.glob("*.py"))[:10]
        hint = f"; Python files there: {', '.join(present)}" if present else ""
        raise InvalidField(field, f"{name!r} not found in the source {shown_source}{hint}")
    try:
        return ast.parse(path.read_bytes(), filename=name)
    except SyntaxError as exc:
        raise InvalidField(
            field, f"{name!r} line {exc.lineno}: {exc.msg}; fix the syntax error"
        ) from exc
    except (ValueError, OSError) as exc:
        raise InvalidField(field, f"{name!r} cannot be read as Python source: {exc}") from exc


def _check_defined(module: ast.Module, field: str, function: str, file_name: str) -> None:
    names, star_import = top_level_names(module.body)
    if function in names or star_import:
        return
    functions = sorted(
        node.name
        for node in module.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and not node.name.startswith("_")
    )
    hint = f"; functions defined there: {', '.join(functions)}" if functions else ""
    raise InvalidField(
        field, f"{function!r} is not defined at the top level of {file_name!r}{hint}"
    )


def top_level_names(body: Iterable[ast.stmt]) -> tuple[set[str], bool]:
    """Names bound at a module's top level (also inside if/try/with), and whether it has a
    ``from x import *`` that could bind any name."""
    names: set[str] = set()
    star = False
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                names.update(_target_names(target))
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            names.update(_target_names(node.target))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    star = True
                else:
                    names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.If | ast.For | ast.While | ast.With | ast.AsyncWith | ast.Try):
            blocks: list[list[ast.stmt]] = [node.body]
            if isinstance(node, ast.If | ast.For | ast.While | ast.Try):
                blocks.append(node.orelse)
            if isinstance(node, ast.Try):
                blocks.append(node.finalbody)
                blocks.extend(handler.body for handler in node.handlers)
            for block in blocks:
                inner, inner_star = top_level_names(block)
                names |= inner
                star = star or inner_star
    return names, star


def _target_names(target: ast.expr) -> set[str]:
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, ast.Tuple | ast.List):
        return set().union(*(_target_names(element) for element in target.elts))
    return set()
