"""Web endpoints end to end: deployed with the CLI, called through the gateway like a user."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from cormorant.sdk import CormorantAPIError, Endpoint
from tests.conftest import ROOT, Stack

EXAMPLES = ROOT / "examples"
TOOLBOX = ROOT / "tests" / "models" / "toolbox"


def deploy(stack: Stack, source: Path, name: str, *flags: str) -> tuple[str, str]:
    """`cormorant deploy` and wait until it serves; the new endpoint's slug and token."""
    result = stack.cli("deploy", str(source), "--name", name, "--server", "workers=1", *flags)
    assert result.returncode == 0, result.stdout + result.stderr
    slug = result.stdout.split("Endpoint ", 1)[1].split(" created", 1)[0]
    token = result.stdout.split("(shown once):", 1)[1].split()[0]
    assert slug.startswith(name)
    return slug, token


@pytest.fixture(scope="module")
def examples(stack: Stack) -> dict[str, Endpoint]:
    """The spec's four examples and the streaming one, deployed from examples/ with the CLI."""
    deployed = {}
    for name, flags in {
        "sentiment": (),
        "regression": (),
        "digits": ("--accepts-file",),
        "multi_args": (),
        "streaming": (),
    }.items():
        slug, token = deploy(stack, EXAMPLES / name, name.replace("_", "-"), *flags)
        deployed[name] = Endpoint(slug, token=token, url=stack.url)
    return deployed


def test_spec_examples_answer_through_the_gateway(examples: dict[str, Endpoint]) -> None:
    """Each example answers with the spec's input semantics, through gateway and SDK."""
    verdict = examples["sentiment"].predict("The food was delicious and the staff were lovely")
    assert verdict["label"] == "positive"
    row = [0.038, 0.051, 0.062, 0.022, -0.044, -0.035, -0.043, -0.003, 0.020, -0.018]
    assert isinstance(examples["regression"].predict([row]), float)
    assert examples["multi_args"].predict(5.1, 1.4, 0.2)["species"] == "setosa"
    for digit in (3, 7):
        png = EXAMPLES / "digits" / "samples" / f"digit_{digit}.png"
        assert examples["digits"].predict_file(png)["digit"] == digit


def test_predict_answer_names_version_and_request(
    stack: Stack, examples: dict[str, Endpoint]
) -> None:
    """The raw HTTP answer carries prediction, version and request id, also as headers."""
    ep = examples["multi_args"]
    response = httpx.post(
        f"{stack.url}/api/v1/endpoints/{ep.slug}/predict",
        json={"input_params": [5.1, 1.4, 0.2]},
        headers={"Authorization": f"Bearer {ep.token}"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"prediction", "version", "request_id"}
    assert response.headers["x-request-id"] == body["request_id"]
    assert response.headers["x-cormorant-version"] == str(body["version"])


def test_stream_first_chunk_arrives_before_the_last_is_produced(
    examples: dict[str, Endpoint],
) -> None:
    """A generator's chunks reach the client as produced, not when predict finishes."""
    words = "one two three four five six"
    arrivals = []
    for chunk in examples["streaming"].stream(words, 0.3):
        arrivals.append((time.monotonic(), chunk["token"]))
    assert [token for _, token in arrivals] == words.split()
    # Five 0.3 s gaps separate first and last chunk when each is forwarded as produced.
    assert arrivals[-1][0] - arrivals[0][0] > 1.0


def test_auth_matrix(stack: Stack, examples: dict[str, Endpoint]) -> None:
    """Every wrong credential is refused with the right status and a message saying why."""
    ep, other = examples["multi_args"], examples["sentiment"]
    url = f"{stack.url}/api/v1/endpoints/{ep.slug}/predict"
    body = {"input_params": [5.1, 1.4, 0.2]}

    def status(headers: dict[str, str], target: str = url, method: str = "POST") -> int:
        response = httpx.request(method, target, json=body, headers=headers)
        if response.status_code >= 400:
            assert response.json()["error"]["message"]
        return response.status_code

    assert status({}) == 401
    assert status({"Authorization": "Bearer cmt_not-a-real-token"}) == 401
    assert status({"Authorization": f"Bearer {other.token}"}) == 403
    assert status({"Authorization": f"Bearer {stack.admin_key}"}) == 403
    management = f"{stack.url}/api/v1/endpoints"
    assert status({"Authorization": f"Bearer {ep.token}"}, management, "GET") == 403
    assert status({}, management, "GET") == 401
    assert status({"Authorization": f"Bearer {stack.admin_key}"}, management, "GET") == 200
    assert status({"Authorization": f"Bearer {ep.token}"}) == 200


def test_no_raw_token_in_the_database(stack: Stack, examples: dict[str, Endpoint]) -> None:
    """No table holds an endpoint token or the admin key in clear, anywhere."""
    import asyncpg
    from sqlalchemy.engine import make_url

    secrets = [ep.token for ep in examples.values() if ep.token] + [stack.admin_key]
    url = make_url(stack.database_url)

    async def dump() -> str:
        conn = await asyncpg.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            database=url.database,
        )
        try:
            tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            texts = []
            for row in tables:
                rows = await conn.fetch(f'SELECT t::text AS t FROM "{row["tablename"]}" t')
                texts.extend(r["t"] for r in rows)
            return "\n".join(texts)
        finally:
            await conn.close()

    everything = asyncio.run(dump())
    assert stack.client().endpoints.list(), "the database holds endpoints to scan"
    for secret in secrets:
        assert secret not in everything


def test_env_and_server_settings_reach_the_replica(stack: Stack) -> None:
    """`env` is visible to predict; `server threads=4` runs four predicts at once."""
    slug, token = deploy(
        stack, TOOLBOX, "toolbox-env", "--function", "echo_env", "--env", "GREETING=hello"
    )
    echo = Endpoint(slug, token=token, url=stack.url)
    assert echo.predict("GREETING") == "hello"
    # The platform's own secrets stay with the services.
    assert echo.predict("CORMORANT_INTERNAL_SECRET") is None
    assert echo.predict("CORMORANT_DATABASE_URL") is None

    slug, token = deploy(
        stack, TOOLBOX, "toolbox-threads", "--function", "four_at_once", "--server", "threads=4"
    )
    ep = Endpoint(slug, token=token, url=stack.url)

    async def four() -> list[object]:
        async with httpx.AsyncClient(timeout=30) as client:
            calls = [
                client.post(
                    f"{stack.url}/api/v1/endpoints/{slug}/predict",
                    json={"input_params": i},
                    headers={"Authorization": f"Bearer {ep.token}"},
                )
                for i in range(4)
            ]
            return [r.json()["prediction"] for r in await asyncio.gather(*calls)]

    # The barrier in predict releases only when four requests are inside it together.
    assert sorted(asyncio.run(four())) == [0, 1, 2, 3]


def test_bind_server_setting_is_refused(stack: Stack) -> None:
    """`--server bind=...` is refused at deploy time with a message naming it."""
    result = stack.cli(
        "deploy", str(TOOLBOX), "--name", "bad-bind", "--function", "slow",
        "--server", "bind=0.0.0.0:9999",
    )  # fmt: skip
    assert result.returncode == 1
    assert "bind" in result.stderr


def test_rerun_token_rotation_and_removal(stack: Stack, examples: dict[str, Endpoint]) -> None:
    """Rerun makes a new endpoint with the same code; a rotated token replaces the old one."""
    client = stack.client()
    ep = examples["multi_args"]
    again = client.endpoints.rerun(ep.slug, name="multi-args-again")
    client.endpoints.wait_until_running(again["slug"])
    copy = Endpoint(again["slug"], token=again["token"], url=stack.url)
    assert copy.predict(5.1, 1.4, 0.2)["species"] == "setosa"

    new_token = client.endpoints.rotate_token(again["slug"])
    with pytest.raises(CormorantAPIError) as refused:
        copy.predict(5.1, 1.4, 0.2)
    assert refused.value.status_code == 401
    assert Endpoint(again["slug"], token=new_token, url=stack.url).predict(5.1, 1.4, 0.2)

    client.endpoints.delete(again["slug"])
    with pytest.raises(CormorantAPIError) as gone:
        client.endpoints.get(again["slug"])
    assert gone.value.status_code == 404


def test_replicas_are_discoverable_by_prometheus(
    stack: Stack, examples: dict[str, Endpoint]
) -> None:
    """The deployer lists every ready replica as a Prometheus HTTP-SD target with labels."""
    import json

    deployer = json.loads((stack.data_dir / "stack.json").read_text())["services"]["deployer"]
    discovery = deployer["url"] + "/internal/prometheus/targets"
    assert httpx.get(discovery).status_code == 401
    groups = httpx.get(discovery, auth=stack.internal()).json()
    slugs = {group["labels"]["endpoint"] for group in groups}
    assert examples["sentiment"].slug in slugs
    target = next(g for g in groups if g["labels"]["endpoint"] == examples["sentiment"].slug)
    assert httpx.get(f"http://{target['targets'][0]}/metrics").status_code == 200


def test_cli_admin_key_grants_the_management_api(stack: Stack) -> None:
    """`cormorant keys create` prints a new admin key that the management API accepts."""
    created = stack.cli("keys", "create", "ci-robot")
    assert created.returncode == 0, created.stdout + created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("cmk_")
    listed = httpx.get(f"{stack.url}/api/v1/endpoints", headers={"Authorization": f"Bearer {key}"})
    assert listed.status_code == 200
    shown = stack.cli("endpoints", "list")
    assert shown.returncode == 0
    assert "slug" in shown.stdout


def test_internal_services_refuse_calls_without_the_credential(stack: Stack) -> None:
    """On 127.0.0.1 the fleet, deployer, predictlog, feedback and alerts answer only their probes
    and metrics without the stack's internal credential; the gateway stays the way in."""
    import json
    import stat

    info = json.loads((stack.data_dir / "stack.json").read_text())
    secrets_file = stack.data_dir / "secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    for name in ("fleet", "deployer", "predictlog", "feedback", "alerts"):
        url = info["services"][name]["url"]
        refused = httpx.get(f"{url}/api/v1/endpoints")
        assert refused.status_code == 401, name
        assert "internal" in refused.json()["error"]["message"]
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert httpx.get(f"{url}/metrics").status_code == 200
        # The admin key is for the gateway; it opens no internal service.
        with_key = httpx.get(
            f"{url}/api/v1/endpoints", headers={"Authorization": f"Bearer {stack.admin_key}"}
        )
        assert with_key.status_code == 401, name
    deployer = info["services"]["deployer"]["url"]
    assert httpx.get(f"{deployer}/api/v1/endpoints", auth=stack.internal()).status_code == 200
    listed = httpx.get(
        f"{stack.url}/api/v1/endpoints", headers={"Authorization": f"Bearer {stack.admin_key}"}
    )
    assert listed.status_code == 200
