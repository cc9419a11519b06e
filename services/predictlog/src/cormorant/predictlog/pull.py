"""Batched fetches from a durable pull consumer, without a task per message.

nats-py's ``PullSubscription.fetch`` awaits each message of a batch through
``asyncio.wait_for`` (a task per message), which caps a consumer near 25,000 messages/s on
one core before any work is done. ``BatchPull`` asks for a batch with one pull request on
the same JetStream protocol (``$JS.API.CONSUMER.MSG.NEXT``) and gathers the replies in a
subscription callback, waking the fetcher once.

A batch is counted in events, not messages: a pack (``cormorant.common.bus.packing``) counts
as the events it carries, so a batch of 2,000 is a few packs or 2,000 plain messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections import deque
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import APIError

from cormorant.common.bus import PACK_EVENTS, pack_size

JS_API = "$JS.API"

_STATUS = "Status"
_HEARTBEAT = "100"
# Statuses that end a pull request without an error: no messages (404), the request
# expired (408), or the server cut it short (409: max ack pending, leadership change...).
_FINISHED = frozenset({"404", "408", "409"})


class _Inbox:
    """What JetStream delivers to our pull requests, gathered by a subscription callback."""

    __slots__ = ("asked", "error", "events", "got", "ready", "request", "wake", "want")

    def __init__(self) -> None:
        self.ready: deque[Msg] = deque()
        self.events = 0
        """Events carried by the messages in ``ready``."""
        self.want = 0
        """Events to gather before waking the fetcher."""
        self.asked = 0
        """Messages asked for by the request being waited on."""
        self.got = 0
        """Messages received since the request being waited on was sent."""
        self.request = ""
        """Reply subject of the request being waited on; older requests' statuses are stale."""
        self.error: Msg | None = None
        self.wake = asyncio.Event()

    async def on_msg(self, msg: Msg) -> None:
        status = msg.headers.get(_STATUS) if msg.headers else None
        if status is None:
            # A message may answer an earlier request that timed out here: keep it all the
            # same, it was delivered to us and the next fetch hands it out.
            self.ready.append(msg)
            self.events += pack_size(msg.headers)
            # Data messages carry their stream subject, not the request's: counted since the
            # last request, which at worst wakes the fetcher a little early.
            self.got += 1
            if self.events >= self.want or self.got >= self.asked:
                self.wake.set()
        elif status != _HEARTBEAT and msg.subject == self.request:
            if status not in _FINISHED:
                self.error = msg
            self.wake.set()


class BatchPull:
    """Fetches batches from one durable consumer through a private inbox."""

    def __init__(
        self, nc: Client, subscription: Subscription, inbox: str, box: _Inbox, next_subject: str
    ) -> None:
        self._nc = nc
        self._subscription = subscription
        self._inbox = inbox
        self._box = box
        self._next = next_subject
        self._seq = 0
        # Events per message in the last batch, to size pull requests in messages; packs
        # are assumed at first, so a backlog of packs is never asked for all at once.
        self._per_message = float(PACK_EVENTS)

    @classmethod
    async def open(
        cls, nc: Client, *, stream: str, durable: str, api_prefix: str = JS_API
    ) -> BatchPull:
        """Subscribe a fresh inbox for pull requests to ``durable`` (which must exist)."""
        inbox = nc.new_inbox()
        box = _Inbox()
        subscription = await nc.subscribe(
            inbox + ".*",
            cb=box.on_msg,
            # Bounded by the batches we ask for, never by these limits.
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )
        return cls(
            nc, subscription, inbox, box, f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        )

    async def fetch(self, batch: int, wait: float) -> list[Msg]:
        """Messages carrying about ``batch`` events: what is stored now, else the first to
        arrive within ``wait`` seconds and whatever came with it; ``TimeoutError`` if none.

        The last message handed out may carry the batch past ``batch`` (a pack is not split).
        """
        box = self._box
        if box.events < batch:
            await self._pull(self._messages_for(batch - box.events), batch, wait, linger=False)
        if not box.ready:
            # Nothing stored: one lingering request for a single message wakes us on the
            # next publish without leaving a request behind that would keep delivering.
            await self._pull(1, 1, wait, linger=True)
            if not box.ready:
                raise TimeoutError
            if box.events < batch:
                await self._pull(self._messages_for(batch - box.events), batch, wait,
                                 linger=False)  # fmt: skip
        msgs: list[Msg] = []
        events = 0
        while box.ready and events < batch:
            msg = box.ready.popleft()
            events += pack_size(msg.headers)
            msgs.append(msg)
        box.events -= events
        self._per_message = max(1.0, events / len(msgs))
        return msgs

    def _messages_for(self, events: int) -> int:
        return max(1, math.ceil(events / self._per_message))

    async def close(self) -> None:
        """Stop receiving, and hand back what was received but not handed out."""
        with contextlib.suppress(Exception):  # nothing to undo on a dead connection
            await self._subscription.unsubscribe()
            # Redelivered at once rather than after ack_wait, to whoever fetches next.
            while self._box.ready:
                await self._box.ready.popleft().nak()
        self._box.ready.clear()
        self._box.events = 0

    async def _pull(self, count: int, want: int, wait: float, *, linger: bool) -> None:
        """Ask for ``count`` messages; wait until ``want`` events arrived or the request ends."""
        box = self._box
        self._seq += 1
        box.request = f"{self._inbox}.{self._seq}"
        box.want = want
        box.asked = count
        box.got = 0
        box.error = None
        box.wake.clear()
        request: dict[str, Any] = {"batch": count}
        if linger:
            # Expire on the server a little before we give up here, so its 408 ends the wait.
            request["expires"] = max(int((wait - 0.05) * 1e9), 1_000_000)
        else:
            request["no_wait"] = True
        await self._nc.publish(self._next, json.dumps(request).encode(), reply=box.request)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await box.wake.wait()
        if box.error is not None:
            APIError.from_msg(box.error)
