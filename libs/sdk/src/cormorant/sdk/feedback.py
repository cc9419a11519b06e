"""``client.feedback``: feedback loops, an endpoint's logged predictions into a dataset.

``client.feedback.create("iris", "iris-feedback", every="6h")`` exports what the endpoint saw
every six hours, ``on="mon,thu 02:30 Europe/Berlin"`` on days at a local time, ``now=True``
once; each run writes only what arrived since the one before as a new dataset version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cormorant.sdk.client import Client


def schedule_of(
    *, now: bool = False, every: str | None = None, on: str | None = None
) -> dict[str, Any]:
    """The API's ``schedule`` from exactly one of ``now``, ``every`` and ``on``."""
    given = [name for name, value in (("now", now), ("every", every), ("on", on)) if value]
    if len(given) != 1:
        raise ValueError("give exactly one schedule: now=True, every='1h' or on='mon 02:30 UTC'")
    if now:
        return {"now": True}
    if every:
        return {"every": every}
    return {"on": on}


class FeedbackLoops:
    """Feedback loops of endpoints: create, list, show, run now, stop."""

    def __init__(self, client: Client) -> None:
        self._client = client

    @staticmethod
    def _path(slug: str, loop_id: str | None = None) -> str:
        base = f"/api/v1/endpoints/{slug}/feedback-loops"
        return base if loop_id is None else f"{base}/{loop_id}"

    def create(
        self,
        slug: str,
        dataset: str,
        *,
        now: bool = False,
        every: str | None = None,
        on: str | None = None,
        format: str = "csv",
        include: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """A new loop of ``slug`` into ``dataset`` (which must exist); the loop."""
        body: dict[str, Any] = {
            "dataset": dataset,
            "schedule": schedule_of(now=now, every=every, on=on),
            "format": format,
        }
        if include is not None:
            body["include"] = list(include)
        loop: dict[str, Any] = self._client.request("POST", self._path(slug), json=body)
        return loop

    def list(self, slug: str | None = None) -> list[dict[str, Any]]:
        """The loops of ``slug`` (of every endpoint without it), with state, last and next run."""
        path = "/api/v1/feedback-loops" if slug is None else self._path(slug)
        loops: list[dict[str, Any]] = self._client.request("GET", path)["feedback_loops"]
        return loops

    def get(self, slug: str, loop_id: str) -> dict[str, Any]:
        """One loop with its runs, newest first."""
        loop: dict[str, Any] = self._client.request("GET", self._path(slug, loop_id))
        return loop

    def run(self, slug: str, loop_id: str) -> dict[str, Any]:
        """Export what is new now; the run (rows, time range, dataset version)."""
        run: dict[str, Any] = self._client.request("POST", self._path(slug, loop_id) + "/run")
        return run

    def stop(self, slug: str, loop_id: str) -> dict[str, Any]:
        """Stop the loop: no run starts after this returns; the stopped loop."""
        loop: dict[str, Any] = self._client.request("DELETE", self._path(slug, loop_id))
        return loop
