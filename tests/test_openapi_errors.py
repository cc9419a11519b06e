"""Every service's OpenAPI document names the statuses its error handlers really answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.test_internal_credential import _build, _packages

METHODS = {"get", "post", "put", "patch", "delete"}


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


@pytest.mark.parametrize("package", [p for p in _packages() if p != "worker"])
def test_errors_are_documented_as_answered(package: str, tmp_path: Path) -> None:
    """No FastAPI 422 (validation answers 400), a 404 wherever the path names something,
    every error in the platform's one shape."""
    app = _build(
        package,
        internal_secret="cmi_x",
        data_dir=tmp_path,
        database_url="postgresql+asyncpg://nobody@127.0.0.1:9/none",
    )
    document = app.openapi()
    operations = _operations(document)
    assert operations or package in ("alerts", "kafka_bridge")
    for method, path, operation in operations:
        responses = operation["responses"]
        where = f"{package}: {method.upper()} {path}"
        if not path.endswith("/infer"):
            assert "422" not in responses, where
        if "{" in path:
            assert "404" in responses, where
        if operation.get("parameters") or "requestBody" in operation:
            assert "400" in responses, where
        for status, response in responses.items():
            if status.startswith(("4", "5")) and "content" in response and status != "503":
                schema = response["content"]["application/json"]["schema"]
                # The Open Inference Protocol answers errors in its own form, {"error": "..."}.
                shape = "ProtocolError" if path.startswith("/v2") else "Error"
                assert schema == {"$ref": f"#/components/schemas/{shape}"}, (where, status)
    assert "HTTPValidationError" not in document.get("components", {}).get("schemas", {})
    if package == "deployer":
        rollout = document["paths"]["/api/v1/endpoints/{slug}/rollout"]["post"]["responses"]
        assert {"400", "404", "409"} <= set(rollout)
