"""``Backoff``: the delays every retry loop of the platform takes, and ``retry`` over them."""

from __future__ import annotations

import pytest

from cormorant.common.retry import Backoff, retry


def test_delays_double_from_initial_up_to_the_cap() -> None:
    """1st failure: ``initial``; each further one doubles; never above ``cap``."""
    backoff = Backoff(initial=0.1, cap=2.0)
    assert [backoff.delay(n) for n in range(1, 8)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    )


def test_jitter_stays_within_its_fraction() -> None:
    """A jittered delay is spread by at most ± the fraction, around the unjittered one."""
    backoff = Backoff(initial=1.0, cap=10.0, jitter=0.2)
    delays = [backoff.delay(2) for _ in range(200)]
    assert all(1.6 <= d <= 2.4 for d in delays)
    assert len(set(delays)) > 1


async def test_retry_stops_after_attempts_and_raises_the_last_failure() -> None:
    """A retryable failure is tried ``attempts`` times in all, then raised."""
    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError(f"attempt {calls}")

    backoff = Backoff(initial=0.001, cap=0.001, attempts=3)
    with pytest.raises(ConnectionError, match="attempt 3"):
        await retry(failing, backoff, retryable=lambda e: True, what="a call")
    assert calls == 3


async def test_retry_raises_a_failure_it_may_not_retry_at_once() -> None:
    """A failure ``retryable`` refuses is raised on the first attempt."""
    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        await retry(
            failing, Backoff(initial=0.001, cap=0.001), retryable=lambda e: False, what="a call"
        )
    assert calls == 1
