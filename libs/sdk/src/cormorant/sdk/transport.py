"""What the SDK's API groups (``client.rollouts``, ``client.flows``) need from a client."""

from __future__ import annotations

from typing import Any, Protocol


class Requester(Protocol):
    """Calls the API: the decoded JSON answer, or ``CormorantAPIError``."""

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call ``method path`` with httpx's keyword arguments."""
        ...
