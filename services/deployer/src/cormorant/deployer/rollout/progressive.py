"""Progressive delivery: a rollout policy's steps, each held, checked on live metrics, advanced.

``{"steps": [10, 50, 100], "interval": "30s", "checks": [...]}``: the canary gets each share in
turn; after ``interval`` every check compares what the canary did during the step with its
threshold, or with the stable version over the same time. A failed check (or metrics that
cannot be read) rolls back at once and records why; once every step passed, the canary is
promoted. The metrics come from the prediction log service over HTTP (its logs and charts
API): error rate and p99 latency from the predictions logged since the step began, a custom
metric (``log_metric``) as its average over the step's minutes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cormorant.common.db.models import RolloutStatus
from cormorant.common.endpoints.store import EndpointRecord
from cormorant.common.errors import BadRequest, Conflict
from cormorant.deployer.rollout.schemas import TrafficOut
from cormorant.deployer.rollout.service import RolloutFailed, RolloutService

log = logging.getLogger(__name__)

ERROR_RATE = "error_rate"
P99_LATENCY = "p99_latency"
_INTERVAL = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Pages of logged predictions read per check (the logs API pages by at most 500).
_MAX_PAGES = 20
_PAGE = 500


def parse_interval(value: str | float) -> float:
    """Seconds of ``"30s"``, ``"2m"``, ``"500ms"`` or a number of seconds."""
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _INTERVAL.match(value.strip())
        if match is None:
            raise ValueError(f"interval must look like 30s, 2m or 500ms, not {value!r}")
        seconds = float(match[1]) * _UNITS[match[2]]
    if not 0 < seconds <= 24 * 3600:
        raise ValueError("interval must be more than 0 and at most 24h")
    return seconds


class Check(BaseModel):
    """One check: the canary's ``metric`` against a threshold or against the stable version."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(
        min_length=1, description="error_rate, p99_latency (ms), or a custom metric's key."
    )
    max: float | None = Field(default=None, description="The canary's value must not exceed it.")
    min: float | None = Field(default=None, description="The canary's value must reach it.")
    max_ratio: float | None = Field(
        default=None, gt=0, description="At most this many times the stable version's value."
    )
    min_ratio: float | None = Field(
        default=None, gt=0, description="At least this many times the stable version's value."
    )
    min_samples: int = Field(
        default=1, ge=0, description="Fewer canary samples than this fail the check."
    )

    @model_validator(mode="after")
    def _one_bound(self) -> Check:
        if all(v is None for v in (self.max, self.min, self.max_ratio, self.min_ratio)):
            raise ValueError(
                f"check {self.metric!r} needs a bound: max, min, max_ratio or min_ratio"
            )
        return self

    @property
    def relative(self) -> bool:
        """Whether the stable version's value is needed."""
        return self.max_ratio is not None or self.min_ratio is not None


class Policy(BaseModel):
    """A progressive rollout."""

    model_config = ConfigDict(extra="forbid")

    steps: list[int] = Field(min_length=1, description="Canary shares in order, 1-100.")
    interval: str | float = "30s"
    checks: list[Check] = Field(default_factory=list)

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[int]) -> list[int]:
        if any(not 1 <= s <= 100 for s in steps):
            raise ValueError("every step must be a percent from 1 to 100")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError("steps must increase, e.g. [10, 50, 100]")
        return steps

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: str | float) -> str | float:
        parse_interval(value)
        return value

    @property
    def seconds(self) -> float:
        """The interval in seconds."""
        return parse_interval(self.interval)


def parse_policy(value: dict[str, Any]) -> Policy:
    """The policy, or ``BadRequest`` naming each problem."""
    try:
        return Policy.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"policy.{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()
        )
        raise BadRequest(problems, details={"field": "policy"}) from exc


@dataclass(frozen=True, slots=True)
class Measure:
    """A metric of one version over a step."""

    value: float | None
    samples: int


class MetricsUnavailable(Exception):
    """The prediction log service did not answer."""


class MetricsReader:
    """Reads a version's metrics since an instant from the prediction log service."""

    def __init__(self, http: httpx.AsyncClient, base_url: str) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")

    async def measure(self, slug: str, version: str, metric: str, since: datetime) -> Measure:
        """``metric`` of ``version`` since ``since``."""
        try:
            if metric in (ERROR_RATE, P99_LATENCY):
                return await self._from_logs(slug, version, metric, since)
            return await self._custom(slug, version, metric, since)
        except httpx.HTTPError as exc:
            raise MetricsUnavailable(f"the prediction log did not answer: {exc}") from exc

    async def _from_logs(self, slug: str, version: str, metric: str, since: datetime) -> Measure:
        statuses: list[int] = []
        latencies: list[float] = []
        cursor: str | None = None
        # Live answers only: a shadow version's answers to mirrored requests never judge a step.
        params: dict[str, Any] = {
            "since": since.isoformat(),
            "version": version,
            "limit": _PAGE,
            "shadow": "false",
        }
        for _ in range(_MAX_PAGES):
            if cursor is not None:
                params["cursor"] = cursor
            url = f"{self.base_url}/api/v1/endpoints/{slug}/logs"
            response = await self.http.get(url, params=params)
            response.raise_for_status()
            page = response.json()
            for item in page["items"]:
                statuses.append(int(item.get("status") or 0))
                if item.get("latency_ms") is not None:
                    latencies.append(float(item["latency_ms"]))
            cursor = page.get("next_cursor")
            if not cursor:
                break
        if metric == ERROR_RATE:
            if not statuses:
                return Measure(None, 0)
            errors = sum(1 for s in statuses if s >= 500)
            return Measure(errors / len(statuses), len(statuses))
        if not latencies:
            return Measure(None, 0)
        latencies.sort()
        return Measure(
            latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], len(latencies)
        )

    async def _custom(self, slug: str, version: str, key: str, since: datetime) -> Measure:
        minutes = max(1, math.ceil((datetime.now(UTC) - since).total_seconds() / 60) + 1)
        response = await self.http.get(
            f"{self.base_url}/api/v1/endpoints/{slug}/charts",
            params={"series": key, "window": f"{minutes}m", "version": version},
        )
        response.raise_for_status()
        total = count = 0.0
        for point in response.json().get("points", []):
            n = float(point.get("count") or 0)
            if n and point.get("avg") is not None:
                total += float(point["avg"]) * n
                count += n
        return Measure(total / count if count else None, int(count))


@dataclass(frozen=True, slots=True)
class CheckResult:
    """A check's outcome in one step."""

    metric: str
    passed: bool
    canary: float | None
    stable: float | None
    samples: int
    reason: str

    def as_json(self) -> dict[str, Any]:
        """For the rollout's ``checks`` history."""
        return {
            "metric": self.metric,
            "passed": self.passed,
            "canary": self.canary,
            "stable": self.stable,
            "samples": self.samples,
            "reason": self.reason,
        }


async def evaluate(
    reader: MetricsReader,
    check: Check,
    *,
    slug: str,
    canary: str,
    stable: str,
    since: datetime,
) -> CheckResult:
    """Run one check over the step that began at ``since``."""
    name = check.metric
    try:
        measured = await reader.measure(slug, canary, name, since)
        baseline = await reader.measure(slug, stable, name, since) if check.relative else None
    except MetricsUnavailable as exc:
        return CheckResult(name, False, None, None, 0, str(exc))
    value = measured.value
    if measured.samples < check.min_samples or value is None:
        return CheckResult(
            name, False, value, None, measured.samples,
            f"{name}: {measured.samples} sample(s) of version {canary}, "
            f"{check.min_samples} needed",
        )  # fmt: skip
    stable_value = baseline.value if baseline is not None else None
    problems = []
    if check.max is not None and value > check.max:
        problems.append(f"{name} {value:.4g} of version {canary} is above {check.max:g}")
    if check.min is not None and value < check.min:
        problems.append(f"{name} {value:.4g} of version {canary} is below {check.min:g}")
    if check.relative and stable_value is not None:
        if check.max_ratio is not None and value > stable_value * check.max_ratio:
            problems.append(
                f"{name} {value:.4g} of version {canary} is above {check.max_ratio:g}× the "
                f"stable version's {stable_value:.4g}"
            )
        if check.min_ratio is not None and value < stable_value * check.min_ratio:
            problems.append(
                f"{name} {value:.4g} of version {canary} is below {check.min_ratio:g}× the "
                f"stable version's {stable_value:.4g}"
            )
    if problems:
        return CheckResult(name, False, value, stable_value, measured.samples, "; ".join(problems))
    note = f"{name} {value:.4g} ok"
    if check.relative and stable_value is None:
        # At 100 % the stable version serves nothing: only the absolute bounds can apply.
        note += " (the stable version has no samples in this step to compare with)"
    return CheckResult(name, True, value, stable_value, measured.samples, note)


class ProgressiveRollouts:
    """Runs policies: registered as ``RolloutService.progressive``."""

    def __init__(self, service: RolloutService, reader: MetricsReader) -> None:
        self.service = service
        self.reader = reader
        self.tasks = service.running

    async def start(
        self, record: EndpointRecord, version: str, raw_policy: dict[str, Any]
    ) -> TrafficOut:
        """Validate, apply the first step (the canary must be ready), run the rest behind."""
        policy = parse_policy(raw_policy)
        service = self.service
        _, canary = await service.canary_runtime(record, version)
        running = self.tasks.get(record.id)
        if running is not None and not running.done():
            raise Conflict(
                f"a progressive rollout of {record.slug} is running; wait for it or roll back",
            )
        rollout_id = await service.store.start_rollout(
            record.id, canary.version.id, policy.model_dump(mode="json")
        )
        if rollout_id is None:
            raise Conflict(f"a rollout of {record.slug} is already running")
        try:
            traffic = await service.set_share(
                record, version, policy.steps[0], rollout_id=rollout_id
            )
        except BaseException as exc:
            if not isinstance(exc, RolloutFailed):
                await service.store.update_rollout(
                    rollout_id, status=RolloutStatus.FAILED, reason=str(exc)
                )
            raise
        self.tasks[record.id] = service.tasks.spawn(
            self._run(record, version, policy, rollout_id),
            name=f"rollout-{record.slug}-{version}",
        )
        return traffic

    async def _run(
        self, record: EndpointRecord, version: str, policy: Policy, rollout_id: uuid.UUID
    ) -> None:
        service = self.service
        history: list[dict[str, Any]] = []
        try:
            for step, percent in enumerate(policy.steps):
                if step > 0:
                    await service.set_share(record, version, percent, reason=f"policy step {step}")
                await service.store.update_rollout(rollout_id, step=step)
                since = datetime.now(UTC)
                await asyncio.sleep(policy.seconds)
                stable = await self._still_canary(record, version)
                if stable is None:
                    await service.store.update_rollout(
                        rollout_id,
                        status=RolloutStatus.CANCELLED,
                        reason="the canary was promoted or rolled back by hand",
                    )
                    return
                results = [
                    await evaluate(
                        self.reader,
                        check,
                        slug=record.slug,
                        canary=version,
                        stable=stable,
                        since=since,
                    )
                    for check in policy.checks
                ]
                history.append(
                    {"step": step, "percent": percent, "results": [r.as_json() for r in results]}
                )
                await service.store.update_rollout(rollout_id, checks=history)
                failed = [r.reason for r in results if not r.passed]
                if failed:
                    reason = f"check failed at {percent}%: " + "; ".join(failed)
                    log.warning("%s: rolling back version %s: %s", record.slug, version, reason)
                    await service.rollback(record.slug, reason=reason)
                    await service.store.update_rollout(
                        rollout_id, status=RolloutStatus.ROLLED_BACK, reason=reason
                    )
                    return
            await service.promote(record.slug, reason="every check of the rollout policy passed")
            await service.store.update_rollout(
                rollout_id, status=RolloutStatus.SUCCEEDED, reason="every check passed"
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("progressive rollout of %s failed", record.slug)
            reason = f"the rollout stopped: {exc}"
            await service.store.update_rollout(
                rollout_id, status=RolloutStatus.FAILED, reason=reason
            )
            try:
                await service.rollback(record.slug, reason=reason)
            except Exception as again:
                log.warning("%s: rollback after a failed rollout refused: %s", record.slug, again)

    async def _still_canary(self, record: EndpointRecord, version: str) -> str | None:
        """The stable version's label while ``version`` is still the running canary."""
        service = self.service
        running = await service.fleet.running(record.id)
        if not running or not running[0].primary or service.is_retiring(record.id, version):
            return None
        if not any(v.label == version for v in running[1:]):
            return None
        return running[0].label
