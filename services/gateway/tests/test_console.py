"""The web console's session over plain HTTP: login, cookie flags, CSRF refusals, logout.

A real gateway (uvicorn, real PostgreSQL for the admin keys, real NATS) in front of a
stand-in deployer that echoes each management call (see gateway_testkit.py). The browser
side is tested with Chromium in the root tests/test_console.py.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from gateway_testkit import Gateway

from cormorant.gateway.console.session import ConsoleSessions


@pytest.fixture
async def gateway(start_gateway: Any) -> AsyncIterator[Gateway]:
    """A gateway with no routes; its management API reaches the echoing stand-in."""
    async with start_gateway([]) as gw:
        yield gw


def same_origin(gw: Gateway) -> dict[str, str]:
    """The headers a browser sends with a same-origin fetch from the console's page."""
    return {"Origin": gw.url, "Sec-Fetch-Site": "same-origin"}


async def login(gw: Gateway, key: str, **headers: str) -> httpx.Response:
    """POST the login form as the browser does (the client's jar keeps no cookie of it)."""
    answer = await gw.http.post(
        "/console/login", data={"key": key}, headers={**same_origin(gw), **headers}
    )
    gw.http.cookies.clear()
    return answer


def session_cookie(answer: httpx.Response) -> str:
    """The value of the session cookie set by ``answer``."""
    match = re.search(r"cormorant_session=([^;]+)", answer.headers["set-cookie"])
    assert match, answer.headers
    return match[1]


async def page_csrf(gw: Gateway, cookie: str) -> str:
    """The CSRF token the console page carries for ``cookie``'s session."""
    page = await gw.http.get("/console", headers={"Cookie": f"cormorant_session={cookie}"})
    assert page.status_code == 200
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert match, page.text[:500]
    return match[1]


async def test_root_redirects_and_login_form_is_served(gateway: Gateway) -> None:
    """/ goes to /console, which shows a labelled login form under a strict CSP."""
    root = await gateway.http.get("/")
    assert root.status_code == 307
    assert root.headers["location"] == "/console"
    page = await gateway.http.get("/console")
    assert page.status_code == 200
    assert '<label for="key">Admin key</label>' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    script = await gateway.http.get("/console/static/console.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    missing = await gateway.http.get("/console/static/../app.py")
    assert missing.status_code == 404


async def test_login_sets_a_strict_http_only_cookie(gateway: Gateway) -> None:
    """A good admin key gets a session cookie: HttpOnly, SameSite=Strict, Secure over https."""
    answer = await login(gateway, gateway.credentials.admin_key)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console"
    flags = answer.headers["set-cookie"].lower()
    assert "httponly" in flags
    assert "samesite=strict" in flags
    assert "path=/" in flags
    assert "secure" not in flags
    assert gateway.credentials.admin_key not in answer.headers["set-cookie"]
    behind_tls = await login(
        gateway, gateway.credentials.admin_key, **{"X-Forwarded-Proto": "https"}
    )
    assert "; secure" in behind_tls.headers["set-cookie"].lower()
    page = await gateway.http.get(
        "/console", headers={"Cookie": f"cormorant_session={session_cookie(answer)}"}
    )
    assert 'action="/console/logout"' in page.text


async def test_login_refuses_bad_keys_and_other_origins(gateway: Gateway) -> None:
    """Unknown keys, endpoint tokens, empty forms and cross-site posts get no cookie."""
    unknown = await login(gateway, "cmk_not-a-key")
    assert unknown.status_code == 401
    assert "unknown or revoked" in unknown.text
    assert "set-cookie" not in unknown.headers
    token = await login(gateway, gateway.credentials.tokens["demo"])
    assert token.status_code == 401
    assert "endpoint token is not an admin key" in token.text
    empty = await login(gateway, "")
    assert empty.status_code == 400
    cross = await gateway.http.post(
        "/console/login",
        data={"key": gateway.credentials.admin_key},
        headers={"Origin": "http://attacker.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert cross.status_code == 403
    assert "set-cookie" not in cross.headers


async def test_session_cookie_passes_the_admin_check_same_origin_only(gateway: Gateway) -> None:
    """The cookie reads the API from the console's origin; other origins are refused."""
    cookie = session_cookie(await login(gateway, gateway.credentials.admin_key))
    jar = {"Cookie": f"cormorant_session={cookie}"}
    keys = await gateway.http.get("/api/v1/keys", headers={**jar, **same_origin(gateway)})
    assert keys.status_code == 200, keys.text
    assert [k["name"] for k in keys.json()["keys"]] == ["test"]
    forwarded = await gateway.http.get("/api/v1/endpoints", headers={**jar, **same_origin(gateway)})
    assert forwarded.status_code == 200
    # The services behind the gateway never see the session cookie.
    assert "cookie" not in forwarded.json()["headers"]
    # The console's calls count in the gateway's metrics like any client's.
    scrape = (await gateway.http.get("/metrics")).text
    assert (
        'cormorant_gateway_forwarded_requests_total{service="deployer",status="200"} 1.0' in scrape
    )
    for foreign in (
        {"Origin": "http://attacker.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ):
        refused = await gateway.http.get("/api/v1/keys", headers={**jar, **foreign})
        assert refused.status_code == 403, foreign
        assert "console's own pages" in refused.json()["error"]["message"]
    forged = cookie[:-4] + ("AAAA" if not cookie.endswith("AAAA") else "BBBB")
    bad = await gateway.http.get("/api/v1/keys", headers={"Cookie": f"cormorant_session={forged}"})
    assert bad.status_code == 401
    assert "log in again" in bad.json()["error"]["message"]


async def test_changes_need_the_csrf_token(gateway: Gateway) -> None:
    """A POST with the cookie alone is refused; with the page's token it goes through."""
    cookie = session_cookie(await login(gateway, gateway.credentials.admin_key))
    jar = {"Cookie": f"cormorant_session={cookie}", **same_origin(gateway)}
    refused = await gateway.http.post("/api/v1/keys", json={"name": "x"}, headers=jar)
    assert refused.status_code == 403
    assert "x-csrf-token" in refused.json()["error"]["message"]
    wrong = await gateway.http.post(
        "/api/v1/keys", json={"name": "x"}, headers={**jar, "X-CSRF-Token": "nope"}
    )
    assert wrong.status_code == 403
    csrf = await page_csrf(gateway, cookie)
    created = await gateway.http.post(
        "/api/v1/keys", json={"name": "from-console"}, headers={**jar, "X-CSRF-Token": csrf}
    )
    assert created.status_code == 201, created.text
    # Another session's token is no good for this one.
    other = session_cookie(await login(gateway, gateway.credentials.admin_key))
    crossed = await gateway.http.post(
        "/api/v1/keys",
        json={"name": "y"},
        headers={"Cookie": f"cormorant_session={other}", "X-CSRF-Token": csrf},
    )
    assert crossed.status_code == 403


async def test_logout_ends_the_session(gateway: Gateway) -> None:
    """Logout needs the page's token, clears the cookie, and the old cookie stops working."""
    cookie = session_cookie(await login(gateway, gateway.credentials.admin_key))
    jar = {"Cookie": f"cormorant_session={cookie}", **same_origin(gateway)}
    no_token = await gateway.http.post("/console/logout", data={"csrf": "x"}, headers=jar)
    assert no_token.status_code == 403
    assert (await gateway.http.get("/api/v1/keys", headers=jar)).status_code == 200
    csrf = await page_csrf(gateway, cookie)
    out = await gateway.http.post("/console/logout", data={"csrf": csrf}, headers=jar)
    assert out.status_code == 303
    assert re.search(r'cormorant_session="?"?;', out.headers["set-cookie"])
    assert "max-age=0" in out.headers["set-cookie"].lower()
    after = await gateway.http.get("/api/v1/keys", headers=jar)
    assert after.status_code == 401
    page = await gateway.http.get("/console", headers=jar)
    assert '<label for="key">Admin key</label>' in page.text


async def test_revoking_the_key_ends_its_sessions(gateway: Gateway) -> None:
    """A session stands for its admin key: revoke the key and the cookie is refused."""
    created = await gateway.http.post(
        "/api/v1/keys", json={"name": "short-lived"}, headers=gateway.admin()
    )
    key = created.json()
    cookie = session_cookie(await login(gateway, key["key"]))
    jar = {"Cookie": f"cormorant_session={cookie}", **same_origin(gateway)}
    assert (await gateway.http.get("/api/v1/keys", headers=jar)).status_code == 200
    revoked = await gateway.http.delete(f"/api/v1/keys/{key['id']}", headers=gateway.admin())
    assert revoked.status_code == 204
    after = await gateway.http.get("/api/v1/keys", headers=jar)
    assert after.status_code == 401
    assert "revoked" in after.json()["error"]["message"]


def test_sessions_expire_and_refuse_tampering() -> None:
    """A cookie is good until its expiry, and only as signed by this secret."""
    sessions = ConsoleSessions(b"k" * 32, ttl_s=600)
    value = sessions.issue("ab" * 32, now=1_000_000)
    session = sessions.verify(value, now=1_000_599)
    assert session is not None
    assert session.key_hash == "ab" * 32
    assert sessions.verify(value, now=1_000_600) is None
    assert ConsoleSessions(b"x" * 32, ttl_s=600).verify(value, now=1_000_000) is None
    nonce, expires, key_hash, mac = value.split(".")
    longer = f"{nonce}.{int(expires) + 3600}.{key_hash}.{mac}"
    assert sessions.verify(longer, now=1_000_000) is None
    assert sessions.csrf_token(session) != ConsoleSessions(b"x" * 32, ttl_s=600).csrf_token(session)


async def test_the_page_carries_the_grafana_address(start_gateway: Any) -> None:
    """grafana_url reaches the Monitoring tab through the page, escaped; unset it is empty."""
    async with start_gateway([], grafana_url='https://grafana.example.org/"x') as gw:
        answer = await login(gw, gw.credentials.admin_key)
        page = await gw.http.get(
            "/console", headers={"Cookie": f"cormorant_session={session_cookie(answer)}"}
        )
        assert '<meta name="grafana-url" content="https://grafana.example.org/&quot;x">' in (
            page.text
        )
    async with start_gateway([]) as gw:
        answer = await login(gw, gw.credentials.admin_key)
        page = await gw.http.get(
            "/console", headers={"Cookie": f"cormorant_session={session_cookie(answer)}"}
        )
        assert '<meta name="grafana-url" content="">' in page.text
