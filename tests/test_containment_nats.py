"""NATS credentials: a replica connects as a user that may publish predictions and metrics
only; its predict code can neither publish a platform event nor read one."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx

from cormorant.sdk import Endpoint
from cormorant.sdk.stackfile import SECRETS_FILE, read_private_json
from tests.conftest import ROOT, Stack
from tests.test_replicas import wait_for
from tests.test_web_endpoints import deploy

HOSTILE = ROOT / "tests" / "models" / "hostile"


def test_a_replicas_nats_user_cannot_publish_or_read_platform_events(stack: Stack) -> None:
    """The hostile model's environment holds the replica user's NATS URL, not the platform's
    password; publishing ``cormorant.replica.*`` and subscribing to ``cormorant.>`` from its
    predict are refused by the server, and its predictions are still logged."""
    slug, token = deploy(stack, HOSTILE, "nats-hostile")

    def call(action: str) -> Any:
        response = httpx.post(
            f"{stack.url}/api/v1/endpoints/{slug}/predict",
            json={"input_params": [action]},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return response.json()["prediction"]

    secrets = read_private_json(stack.data_dir / SECRETS_FILE) or {}
    environ: dict[str, str] = call("environ")
    url = urlsplit(environ["CORMORANT_NATS_URL"])
    assert url.username == "replica"
    assert secrets["nats_password"] not in str(environ)
    refused: list[str] = call("nats")
    assert any('publish to "cormorant.replica.forged"' in e for e in refused), refused
    assert any('subscription to "cormorant.>"' in e for e in refused), refused
    endpoint = Endpoint(slug, token=token, url=stack.url, api_key=stack.admin_key)
    wait_for(lambda: len(endpoint.logs()) >= 2, 60, "the replica's predictions logged")
