"""Bad endpoint requests are refused with a 400 that names the field and what to fix."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from deployer_testkit import DeployerHarness

from cormorant.common.endpoints.schemas import EndpointSpec, ReplicasSpec
from cormorant.deployer.endpoints.validation import changed_request, top_level_names

WORKERS_1 = {"workers": 1}


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        ({"file": "my-model.py"}, ["file: ", "my-model.py", "rename it, e.g. my_model.py"]),
        ({"file": "missing.py"}, ["file: 'missing.py' not found in the source", "predict.py"]),
        (
            {"function": "predikt"},
            [
                "function: 'predikt' is not defined at the top level",
                "functions defined there: helper, predict",
            ],
        ),
        ({"preprocess_function": "prep"}, ["preprocess_function: 'prep' is not defined"]),
        ({"preprocess_file": "predict.py"}, ["preprocess_function: preprocess_file is set"]),
        ({"source": "/no/such/dir"}, ["source: the directory '/no/such/dir' does not exist"]),
        ({"source": "relative/dir"}, ["source: 'relative/dir' is neither an absolute"]),
        ({"replicas": {"min": 3, "max": 2}}, ["replicas: min (3) is greater than max (2)"]),
        ({"replicas": {"min": 0}}, ["replicas.min: a web endpoint needs at least 1 replica"]),
        ({"replicas": {"min": -1}}, ["replicas.min: Input should be greater than or equal to 0"]),
        ({"kind": "stream"}, ["kafka: a stream endpoint needs a kafka section"]),
        (
            {"kind": "stream", "kafka": {"input_topics": ["in"]}},
            ["kafka.output_topic: required"],
        ),
        (
            {"kind": "stream", "kafka": {"input_topics": ["bad topic"], "output_topic": "o"}},
            ["kafka.input_topics: Value error, 'bad topic' is not a Kafka topic name"],
        ),
        ({"kind": "batch", "replicas": {"min": 2}}, ["replicas.min: a batch endpoint rests at 0"]),
        ({"kafka": {"topics": ["x"]}}, ["kafka: only stream endpoints take a kafka section"]),
        ({"env": {"NOT-OK": "1"}}, ["env: 'NOT-OK' is not an environment variable name"]),
        ({"colour": "red"}, ["colour: unknown field; accepted fields are accepts_file"]),
        ({"replicas": {"mn": 1}}, ["replicas.mn: unknown field; accepted fields are max, min"]),
        ({"name": None}, ["name: Input should be a valid string"]),
        ({"timeout_s": 0}, ["timeout_s: Input should be greater than 0"]),
    ],
)
async def test_bad_requests_are_refused_with_the_field_and_the_fix(
    deployer: DeployerHarness, tmp_path: Path, change: dict[str, Any], fragments: list[str]
) -> None:
    """Each mistake a user can make in the create request gets a 400 saying what to change,
    and nothing is created."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "predict.py").write_text(
        "def helper():\n    pass\n\n\ndef predict(x):\n    return x\n"
    )
    body = {"name": "bad", "source": str(source), "server": WORKERS_1, **change}
    response = await deployer.client.post("/api/v1/endpoints", json=body)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    for fragment in fragments:
        assert fragment in message
    listed = (await deployer.client.get("/api/v1/endpoints")).json()
    assert listed == {"endpoints": []}


async def test_missing_name_and_source_are_named(deployer: DeployerHarness) -> None:
    """An empty body says which fields are required."""
    response = await deployer.client.post("/api/v1/endpoints", json={})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "name: required; source: required"


async def test_body_that_is_not_json_is_refused(deployer: DeployerHarness) -> None:
    """A body that is not JSON says so instead of listing every missing field."""
    response = await deployer.client.post(
        "/api/v1/endpoints", content=b"{name: x", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("body: not valid JSON")


async def test_unknown_endpoint_is_a_404_with_a_hint(deployer: DeployerHarness) -> None:
    """Reading, rerunning or rotating the token of a slug that does not exist says so."""
    for method, path in [
        ("GET", "/api/v1/endpoints/nope"),
        ("POST", "/api/v1/endpoints/nope/rerun"),
        ("POST", "/api/v1/endpoints/nope/token"),
        ("GET", "/internal/routing/nope"),
    ]:
        response = await deployer.client.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["message"].startswith("endpoint 'nope' not found")


def test_top_level_names_see_defs_assignments_imports_and_guarded_blocks() -> None:
    """The function check accepts every way a module binds a name, without importing it."""
    tree = ast.parse(
        "import numpy as np\n"
        "from os import path\n"
        "def predict(x): pass\n"
        "async def apredict(x): pass\n"
        "class Model: pass\n"
        "alias = predict\n"
        "a, (b, c) = 1, (2, 3)\n"
        "typed: int = 1\n"
        "try:\n    from fast import run\nexcept ImportError:\n    def run(x): pass\n"
        "if True:\n    flagged = 1\n"
        "def outer():\n    inner = 1\n"
    )
    names, star = top_level_names(tree.body)
    assert {"np", "path", "predict", "apredict", "Model", "alias", "a", "b", "c", "typed",
            "run", "flagged", "outer"} <= names  # fmt: skip
    assert "inner" not in names
    assert star is False
    assert top_level_names(ast.parse("from x import *").body)[1] is True


def _stream_spec(tmp_path: Path) -> EndpointSpec:
    kafka = {
        "input_topics": ["orders"],
        "output_topic": "scores",
        "security": {"sasl.username": "svc", "sasl.password": "hunter2"},
    }
    return EndpointSpec(
        name="fraud", kind="stream", source=str(tmp_path), commit=None, file="predict.py",
        function="predict", preprocess_file=None, preprocess_function=None, accepts_file=False,
        env={}, server={}, replicas=ReplicasSpec(min=1, max=1, target=10), timeout_s=60,
        kafka=kafka,
    )  # fmt: skip


def test_a_rerun_keeps_the_kafka_secrets_it_cannot_resend(tmp_path: Path) -> None:
    """The API masks secrets, so a rerun's kafka section is merged into the stored one."""
    spec = _stream_spec(tmp_path)
    # What the console's Rerun form sends when its security box is left blank.
    rerun = changed_request(spec, {"kafka": {"input_topics": ["orders"], "output_topic": "v2"}})
    assert rerun.kafka is not None
    assert rerun.kafka["output_topic"] == "v2"
    assert rerun.kafka["security"] == {"sasl.username": "svc", "sasl.password": "hunter2"}

    # The masked answer sent back keeps the secret; a changed key changes.
    masked = {"security": {"sasl.username": "other", "sasl.password": "***"}}
    rerun = changed_request(spec, {"kafka": masked})
    assert rerun.kafka is not None
    assert rerun.kafka["security"] == {"sasl.username": "other", "sasl.password": "hunter2"}
    assert rerun.kafka["output_topic"] == "scores"

    # An explicit empty section clears them (a broker without SASL).
    cleared = changed_request(spec, {"kafka": {"security": {}}})
    assert cleared.kafka is not None
    assert cleared.kafka["security"] == {}
