"""Replica ports answer only the platform: another endpoint's predict code (or anything else
on 127.0.0.1) calling a replica's port directly gets 401, with or without its own key."""

from __future__ import annotations

import json
from typing import Any

import httpx

from cormorant.common.internal import REPLICA_KEY_HEADER, REPLICA_KEY_VARIABLE
from tests.conftest import ROOT, Stack
from tests.test_web_endpoints import deploy

ECHO = ROOT / "tests" / "models" / "echo"
HOSTILE = ROOT / "tests" / "models" / "hostile"


def replica_of(stack: Stack, slug: str) -> dict[str, Any]:
    """The endpoint's (one) ready replica in the deployer's routing table."""
    info = json.loads((stack.data_dir / "stack.json").read_text())
    deployer = info["services"]["deployer"]["url"]
    route = httpx.get(f"{deployer}/internal/routing/{slug}", auth=stack.internal()).json()
    [replica] = route["replicas"]
    return dict(replica)


def test_a_replica_port_refuses_everyone_but_the_platform(stack: Stack) -> None:
    """A hostile endpoint's predict posts to the victim's replica port: 401 without a key and
    with its own replica's key (the only one in its environment); the victim answers through
    the gateway, and its probes stay open."""
    victim, victim_token = deploy(stack, ECHO, "key-victim")
    hostile, hostile_token = deploy(stack, HOSTILE, "key-hostile")
    target = replica_of(stack, victim)
    url = f"{target['url']}/predict"

    def hostile_call(action: str, arg: object = None) -> Any:
        response = httpx.post(
            f"{stack.url}/api/v1/endpoints/{hostile}/predict",
            json={"input_params": [action, arg]},
            headers={"Authorization": f"Bearer {hostile_token}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return response.json()["prediction"]

    environ: dict[str, str] = hostile_call("environ")
    own_key = environ[REPLICA_KEY_VARIABLE]
    assert own_key.startswith("cmr_")
    assert hostile_call("post", [url, {}]) == {"status": 401}
    assert hostile_call("post", [url, {REPLICA_KEY_HEADER: own_key}]) == {"status": 401}
    rows = f"{target['url']}/predict/batch"
    assert hostile_call("post", [rows, {REPLICA_KEY_HEADER: own_key}]) == {"status": 401}

    direct = httpx.post(url, json={"input_params": 1}, timeout=10)
    assert direct.status_code == 401
    assert direct.json()["error"]["code"] == "replica_key_required"
    assert httpx.get(f"{target['url']}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{target['url']}/metrics", timeout=10).status_code == 200

    through = httpx.post(
        f"{stack.url}/api/v1/endpoints/{victim}/predict",
        json={"input_params": 7},
        headers={"Authorization": f"Bearer {victim_token}"},
        timeout=30,
    )
    assert through.status_code == 200, through.text
    assert through.json()["prediction"] == 7
    v2 = httpx.post(
        f"{stack.url}/v2/models/{victim}/infer",
        json={"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [7]}]},
        headers={"Authorization": f"Bearer {victim_token}"},
        timeout=30,
    )
    assert v2.status_code == 200, v2.text
