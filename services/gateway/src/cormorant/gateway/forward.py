"""The management API behind the gateway: each ``/api/v1`` path forwarded to its owner.

After the admin-key check the request goes on with its method, query, headers (minus the
hop-by-hop ones and the caller's ``Authorization``, which the client's ``InternalAuth`` replaces
with the stack's internal credential: the services answer nothing else) and body, both ways
streamed, so a large CSV export or upload never sits whole in the gateway's memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import httpx
from starlette.requests import Request
from starlette.responses import StreamingResponse

from cormorant.common.errors import NotFound
from cormorant.common.telemetry import inject_context
from cormorant.gateway.errors import BadGateway, GatewayTimeout
from cormorant.gateway.metrics import GatewayMetrics

API_PREFIX = "/api/v1/"
PREDICTLOG_PARTS = frozenset({"logs", "logs.csv", "charts", "metrics"})
_ENDPOINT_PARTS = {"feedback-loops": "feedback", "batch-jobs": "batch", "triggers": "alerts"}
"""Parts of ``/endpoints/{slug}/<part>`` owned by a service other than the deployer."""

# RFC 9110 §7.6.1 hop-by-hop fields, plus what the client and server of each hop set anew.
_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "authorization",
        # The console's session cookie is a credential too, for the gateway alone.
        "cookie",
    }
)
_ANSWER_SKIP = frozenset({*_HOP_HEADERS, "date", "server"})


def owner(path: str) -> str | None:
    """The service that owns ``path`` (an ``/api/v1/...`` path), or None."""
    parts = path[len(API_PREFIX) :].split("/")
    head = parts[0]
    if head == "endpoints":
        part = parts[2] if len(parts) >= 3 else ""
        if part in PREDICTLOG_PARTS:
            return "predictlog"
        return _ENDPOINT_PARTS.get(part, "deployer")
    if head == "manifests":
        return "deployer"
    if head in ("datasets", "feedback-loops"):
        return "feedback"
    if head in ("triggers", "flows"):
        return "alerts"
    return None


class Forwarder:
    """Forwards management calls to the deployer, batch, predictlog, feedback and alerts."""

    def __init__(
        self, services: Mapping[str, str], http: httpx.AsyncClient, metrics: GatewayMetrics
    ) -> None:
        self.services = {name: url.rstrip("/") for name, url in services.items()}
        self._http = http
        self._metrics = metrics

    async def forward(self, request: Request) -> StreamingResponse:
        """Send ``request`` on to its owner and stream the answer back."""
        path = request.url.path
        service = owner(path)
        if service is None:
            raise NotFound(f"no API at {path}; see GET /openapi.json for the routes")
        base = self.services[service]
        raw_path = request.scope.get("raw_path") or path.encode()
        url = base + raw_path.decode("latin-1")
        if request.url.query:
            url += "?" + request.url.query
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS]
        client = request.client
        if client is not None:
            forwarded_for = request.headers.get("x-forwarded-for")
            chain = f"{forwarded_for}, {client.host}" if forwarded_for else client.host
            headers = [(k, v) for k, v in headers if k.lower() != "x-forwarded-for"]
            headers.append(("x-forwarded-for", chain))
        headers.append(("x-forwarded-proto", request.url.scheme))
        if "host" in request.headers:
            headers.append(("x-forwarded-host", request.headers["host"]))
        carrier: dict[str, str] = {}
        inject_context(carrier)
        headers.extend(carrier.items())
        has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
        upstream = self._http.build_request(
            request.method, url, headers=headers, content=request.stream() if has_body else None
        )
        try:
            answer = await self._http.send(upstream, stream=True)
        except httpx.TimeoutException as exc:
            self._metrics.forwarded.labels(service, "504").inc()
            raise GatewayTimeout(
                f"the {service} service did not answer in time at {base}; retry shortly"
            ) from exc
        except httpx.TransportError as exc:
            self._metrics.forwarded.labels(service, "502").inc()
            raise BadGateway(
                f"the {service} service is unreachable at {base} ({type(exc).__name__}); "
                "check that it runs (`cormorant status`)"
            ) from exc
        self._metrics.forwarded.labels(service, str(answer.status_code)).inc()
        response = StreamingResponse(_relay(answer), status_code=answer.status_code)
        # Raw pairs, not a mapping: repeated fields such as Set-Cookie must all come back.
        response.raw_headers = [
            (k, v) for k, v in answer.headers.raw if k.lower().decode("latin-1") not in _ANSWER_SKIP
        ]
        return response


async def _relay(answer: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in answer.aiter_raw():
            yield chunk
    finally:
        await answer.aclose()
