"""HTTP client of the Cormorant API: management with an admin key, predictions with a token."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from pydantic_settings import BaseSettings, SettingsConfigDict

from cormorant.common.predictor.context import current_metric_sink
from cormorant.sdk.feedback import FeedbackLoops
from cormorant.sdk.flows import Flows
from cormorant.sdk.metrics import log_metric
from cormorant.sdk.rollout import Rollouts
from cormorant.sdk.stackfile import read_stack_file
from cormorant.sdk.triggers import Triggers


class SdkSettings(BaseSettings):
    """Where the SDK and CLI find the platform (environment prefix ``CORMORANT_``)."""

    model_config = SettingsConfigDict(
        env_prefix="CORMORANT_", extra="ignore", use_attribute_docstrings=True
    )

    url: str | None = None
    """Gateway URL; defaults to the local stack's, from ``.cormorant/stack.json``."""

    api_key: str | None = None
    """Admin key for the management API; defaults to the local stack's bootstrap key."""

    data_dir: Path = Path(".cormorant")
    """Where the local stack keeps its stack file."""

    timeout: float = 60.0
    """Seconds an API call may take."""


class CormorantAPIError(Exception):
    """The API refused a call; carries the server's status, code and message."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message


class NotConfigured(ValueError):
    """No Cormorant to talk to: no URL given, set, or found in a running local stack."""


def _raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:500] or response.reason_phrase
    raise CormorantAPIError(response.status_code, code, message)


def _defaults(url: str | None, api_key: str | None) -> tuple[str, str | None, float]:
    settings = SdkSettings()
    stack = read_stack_file(settings.data_dir.absolute()) or {}
    gateway = stack.get("services", {}).get("gateway", {}).get("url")
    resolved = url or settings.url or gateway
    if not resolved:
        raise NotConfigured("no Cormorant URL: pass url=, set CORMORANT_URL, or run `make up`")
    return (
        resolved.rstrip("/"),
        api_key or settings.api_key or stack.get("admin_key"),
        (settings.timeout),
    )


class Endpoints:
    """``client.endpoints``: create, list, inspect, rerun and remove endpoints."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, name: str, source: str | Path, **fields: Any) -> dict[str, Any]:
        """Deploy ``source`` as a new endpoint; the answer holds its ``slug`` and ``token``."""
        body = {"name": name, "source": str(source), **_drop_none(fields)}
        result: dict[str, Any] = self._client.request("POST", "/api/v1/endpoints", json=body)
        return result

    def list(self) -> list[dict[str, Any]]:
        """Every endpoint."""
        result: list[dict[str, Any]] = self._client.request("GET", "/api/v1/endpoints")["endpoints"]
        return result

    def get(self, slug: str) -> dict[str, Any]:
        """One endpoint, with its status and replicas."""
        result: dict[str, Any] = self._client.request("GET", f"/api/v1/endpoints/{slug}")
        return result

    def delete(self, slug: str) -> None:
        """Stop and remove an endpoint."""
        self._client.request("DELETE", f"/api/v1/endpoints/{slug}")

    def rerun(self, slug: str, **overrides: Any) -> dict[str, Any]:
        """A new endpoint with the same settings as ``slug``, any field overridden."""
        path = f"/api/v1/endpoints/{slug}/rerun"
        result: dict[str, Any] = self._client.request("POST", path, json=_drop_none(overrides))
        return result

    def rotate_token(self, slug: str) -> str:
        """Revoke the endpoint's token and return a new one."""
        result = self._client.request("POST", f"/api/v1/endpoints/{slug}/token")
        return str(result["token"])

    def manifests(self, slug: str | None = None) -> dict[str, Any]:
        """The Kubernetes objects of endpoint ``slug`` (of every endpoint without one): the
        answer's ``objects`` as JSON and ``yaml`` as one YAML stream."""
        path = f"/api/v1/endpoints/{slug}/manifests" if slug else "/api/v1/manifests"
        result: dict[str, Any] = self._client.request("GET", path)
        return result

    def wait_until_running(self, slug: str, timeout: float = 120.0) -> dict[str, Any]:
        """Poll until the endpoint serves; raise if it fails or the time is up."""
        deadline = time.monotonic() + timeout
        while True:
            endpoint = self.get(slug)
            if endpoint["status"] in ("running", "idle"):
                return endpoint
            if endpoint["status"] == "failed":
                raise CormorantAPIError(409, "endpoint_failed", str(endpoint.get("reason")))
            if time.monotonic() > deadline:
                raise TimeoutError(f"endpoint {slug} is still {endpoint['status']}")
            time.sleep(0.25)


class Keys:
    """``client.keys``: admin keys for the management API."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, name: str) -> dict[str, Any]:
        """A new admin key; the answer's ``key`` is shown only this once."""
        result: dict[str, Any] = self._client.request("POST", "/api/v1/keys", json={"name": name})
        return result


def _drop_none(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


class Client:
    """The management API: ``Client(url, api_key).endpoints.create(...)``."""

    def __init__(self, url: str | None = None, api_key: str | None = None) -> None:
        self.url, self.api_key, timeout = _defaults(url, api_key)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self.endpoints = Endpoints(self)
        self.keys = Keys(self)
        self.rollouts = Rollouts(self)
        self.flows = Flows(self)
        self.feedback = FeedbackLoops(self)
        self.triggers = Triggers(self)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the API and return its decoded JSON, or raise CormorantAPIError."""
        response = self._http.request(method, path, **kwargs)
        _raise_for_error(response)
        return response.json() if response.content else None

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A streamed API response (checked for errors before its body is read)."""
        with self._http.stream(method, path, **kwargs) as response:
            if not response.is_success:
                response.read()
                _raise_for_error(response)
            yield response

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Endpoint:
    """One endpoint: ``Endpoint(slug, token=...).predict(*input)``."""

    def __init__(
        self,
        slug: str | None = None,
        *,
        token: str | None = None,
        url: str | None = None,
        api_key: str | None = None,
    ) -> None:
        self.slug = slug
        self.token = token
        self._url = url
        self._api_key = api_key

    def _admin(self) -> Client:
        """A management client: logs, export and metrics take an admin key, not the token."""
        if self.slug is None:
            raise ValueError("name the endpoint: Endpoint('my-endpoint')")
        return Client(self._url, self._api_key)

    def _http(self) -> httpx.Client:
        if self.slug is None:
            raise ValueError("name the endpoint: Endpoint('my-endpoint', token=...)")
        if self.token is None:
            raise ValueError(f"pass the token of endpoint {self.slug!r}: Endpoint(slug, token=...)")
        url, _, timeout = _defaults(self._url, None)
        return httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {self.token}"}, timeout=timeout
        )

    def _predict_path(self) -> str:
        return f"/api/v1/endpoints/{self.slug}/predict"

    def predict(self, *input_params: Any) -> Any:
        """Predict: several arguments become the input list, one argument is passed as is."""
        body = {"input_params": list(input_params) if len(input_params) != 1 else input_params[0]}
        with self._http() as http:
            response = http.post(self._predict_path(), json=body)
        _raise_for_error(response)
        return response.json()["prediction"]

    def batch_predict(
        self,
        input_file: str | Path,
        output_file: str,
        dataset: str,
        *,
        wait: bool = True,
        progress: Callable[[dict[str, Any]], None] | None = None,
        log_predictions: bool = False,
    ) -> Any:
        """Run a batch job: the final job (``wait``) or a ``BatchJob`` handle; with
        ``log_predictions``, its rows are also recorded in the prediction log."""
        from cormorant.sdk.batch import start_job  # the batch module imports this one

        if self.slug is None:
            raise ValueError("name the endpoint: Endpoint('my-endpoint')")
        job = start_job(
            self._admin(), self.slug, input_file, output_file, dataset,
            log_predictions=log_predictions,
        )  # fmt: skip
        return job.wait(progress=progress) if wait else job

    def feedback_loop(self, dataset: str, **schedule_and_options: Any) -> dict[str, Any]:
        """A feedback loop of this endpoint into ``dataset``: ``now=True``, ``every="1h"`` or
        ``on="mon 02:30 Europe/Berlin"``, and ``format``, ``include``
        (``client.feedback.create``)."""
        if self.slug is None:
            raise ValueError("name the endpoint: Endpoint('my-endpoint')")
        with self._admin() as client:
            return client.feedback.create(self.slug, dataset, **schedule_and_options)

    def predict_file(self, path: str | Path) -> Any:
        """Predict on a file: its bytes are sent Base64-encoded, as file endpoints expect."""
        encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        return self.predict(encoded)

    def stream(self, *input_params: Any) -> Iterator[Any]:
        """Iterate the chunks of a streaming predict function as they arrive."""
        body = {"input_params": list(input_params) if len(input_params) != 1 else input_params[0]}
        with self._http() as http, http.stream("POST", self._predict_path(), json=body) as resp:
            if not resp.is_success:
                resp.read()
                _raise_for_error(resp)
            for line in resp.iter_lines():
                if not line.strip():
                    continue
                item = json.loads(line)
                if "error" in item:
                    # The stream had started, so the failure arrives as its last item.
                    error = item["error"]
                    raise CormorantAPIError(500, error["code"], error["message"])
                yield item["prediction"]

    def log_metric(self, key: str, value: float, *, version: str | None = None) -> None:
        """Record a numeric metric: inside predict code for the endpoint being served,
        elsewhere for the named endpoint through the API."""
        if self.slug is None or current_metric_sink() is not None:
            log_metric(key, value)
            return
        body = _drop_none({"key": key, "value": value, "version": version})
        with self._admin() as client:
            client.request("POST", f"/api/v1/endpoints/{self.slug}/metrics", json=body)

    def logs(self, *, limit: int = 100, **filters: Any) -> list[dict[str, Any]]:
        """The newest logged predictions (filters: since, until, version, status, q, shadow)."""
        items: list[dict[str, Any]] = []
        params = {"limit": min(limit, 1000), **_drop_none(filters)}
        with self._admin() as client:
            while len(items) < limit:
                page = client.request("GET", f"/api/v1/endpoints/{self.slug}/logs", params=params)
                items.extend(page["items"])
                if not page.get("next_cursor") or not page["items"]:
                    break
                params["cursor"] = page["next_cursor"]
        return items[:limit]

    def export_csv(
        self, path: str | Path, *, progress: Callable[[int], None] | None = None, **filters: Any
    ) -> int:
        """Write every logged prediction to a CSV file, streamed; the number of bytes written."""
        target = Path(path)
        written = 0
        partial = target.with_name(target.name + ".partial")
        try:
            with (
                self._admin() as client,
                open(partial, "wb") as out,
                client.stream(
                    "GET", f"/api/v1/endpoints/{self.slug}/logs.csv", params=_drop_none(filters)
                ) as response,
            ):
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    written += len(chunk)
                    if progress is not None:
                        progress(written)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        # Only a complete download takes the name: a failed one never looks like an export.
        partial.replace(target)
        return written

    def charts(self, series: str = "requests_per_minute", window: str = "1h") -> dict[str, Any]:
        """Per-minute points of a series: requests_per_minute, latency or a logged metric."""
        with self._admin() as client:
            result: dict[str, Any] = client.request(
                "GET",
                f"/api/v1/endpoints/{self.slug}/charts",
                params={"series": series, "window": window},
            )
        return result
