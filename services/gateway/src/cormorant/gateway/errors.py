"""The gateway's own errors: each builds a message that says what happened and what to do."""

from __future__ import annotations

from cormorant.common.errors import (
    Conflict,
    CormorantError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
)


class BadGateway(CormorantError):
    """A service or replica behind the gateway failed to answer."""

    status_code = 502
    code = "bad_gateway"


class GatewayTimeout(CormorantError):
    """A replica did not answer within the endpoint's timeout."""

    status_code = 504
    code = "timeout"


class BodyTooLarge(PayloadTooLarge):
    """The request body exceeds ``max_body_bytes``."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the request body is larger than the gateway's limit of {limit} bytes; "
            "send a smaller input (or raise CORMORANT_GATEWAY_MAX_BODY_BYTES)",
            details={"limit": limit},
        )


class UnknownEndpoint(NotFound):
    """No endpoint with this slug is routed."""

    def __init__(self, slug: str) -> None:
        super().__init__(f"no endpoint {slug!r}; list them with GET /api/v1/endpoints")


class NoReadyReplica(ServiceUnavailable):
    """The endpoint has no replica ready to answer."""

    def __init__(self, slug: str, status: str) -> None:
        super().__init__(
            f"endpoint {slug!r} has no ready replica (status {status!r}); "
            "retry once it is running, see GET /api/v1/endpoints/" + slug
        )


class VersionNotServing(ServiceUnavailable):
    """A request pinned a version (``X-Cormorant-Version``) that has no ready replica."""

    def __init__(self, slug: str, version: str, versions: list[str]) -> None:
        shown = ", ".join(versions) or "none"
        super().__init__(
            f"version {version!r} of endpoint {slug!r} has no ready replica (versions routed: "
            f"{shown}); drop the X-Cormorant-Version header or see "
            f"GET /api/v1/endpoints/{slug}/traffic",
            details={"version": version, "versions": versions},
        )


class BatchEndpoint(Conflict):
    """A batch endpoint at zero replicas does not answer predict."""

    def __init__(self, slug: str) -> None:
        super().__init__(
            "batch endpoints serve batch jobs: POST /api/v1/endpoints/" + slug + "/batch-jobs"
        )


class StreamEndpoint(Conflict):
    """A stream endpoint reads its input from Kafka, not from HTTP."""

    def __init__(self, slug: str) -> None:
        super().__init__(
            f"endpoint {slug!r} is a stream endpoint: produce its input to its Kafka input topic"
        )


class ReplicaTimeout(GatewayTimeout):
    """The replica did not answer within the endpoint's ``timeout_s``."""

    def __init__(self, slug: str, timeout_s: float, *, version: str | None = None) -> None:
        super().__init__(
            f"endpoint {slug!r} did not answer within its timeout of {timeout_s:g} s",
            details={"timeout_s": timeout_s},
        )
        self.version = version
        """The version of the replica that was asked, for the prediction log."""


class ReplicaFailed(BadGateway):
    """The replica accepted the request, then failed before answering it completely."""

    def __init__(self, slug: str, reason: str, *, version: str | None = None) -> None:
        super().__init__(
            f"a replica of endpoint {slug!r} failed while answering ({reason}); "
            "the request was not retried since the replica may have run it"
        )
        self.version = version
        """The version of the replica that was asked, for the prediction log."""


class ReplicasUnreachable(BadGateway):
    """No replica of the endpoint accepted a connection."""

    def __init__(self, slug: str, tried: int, reason: str, *, version: str | None = None) -> None:
        super().__init__(
            f"no replica of endpoint {slug!r} accepted a connection "
            f"({tried} tried, last error: {reason}); retry shortly"
        )
        self.version = version
        """The version of the last replica tried, for the prediction log."""
