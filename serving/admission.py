"""Admission control: bounded inference requests in flight and in queue, and a deadline for each.

An inference request (``POST /predict`` or ``POST /v2/models/{name}/infer``) takes a slot when one of
``max_in_flight`` is free, else waits in a queue of at most ``max_queued``. Past both, the request gets
a 429 response with ``Retry-After`` at once, before its body is read. Uvicorn reads and discards the
unread body, so the connection stays usable. Every other route (health probes, metadata, metrics) is
never limited.

Each admitted request has a deadline ``timeout_s`` after its arrival, stored in the ASGI scope's
state as ``request_deadline`` (``time.monotonic`` seconds) so the request's work can stop early. A
request without a response at its deadline is answered 504, queued or not. Its work may still be
running in a thread, so its slot is freed only when that work ends, and the limit keeps counting
the CPU that the work uses.

All state lives on the event loop of one API worker process, so no lock is needed; the limits are
per worker.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger(__name__)

DEADLINE_KEY = "request_deadline"
ADMISSION_WAIT_KEY = "admission_wait_s"

Outcome = Literal["admitted", "rejected", "timed_out"]


def inference_route(scope: dict) -> str | None:
    """Return the route label of an inference request, or None for any other request."""
    if scope.get("type") != "http" or scope.get("method") != "POST":
        return None
    path = scope.get("path", "")
    if path == "/predict":
        return "/predict"
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return "/v2/infer"
    return None


@dataclass(frozen=True)
class AdmissionEvent:
    """Outcome of one inference request, for metrics and logs."""

    route: str
    path: str
    status: int
    seconds: float
    reason: Literal["completed", "rejected", "timed_out"]


class AdmissionGate:
    """Slots for requests in flight and a bounded first-in, first-out queue for the rest."""

    def __init__(self, max_in_flight: int, max_queued: int):
        if max_in_flight < 1 or max_queued < 0:
            raise ValueError(
                f"max_in_flight must be >= 1 and max_queued >= 0, got {max_in_flight} and {max_queued}"
            )
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued
        self.in_flight = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def enter(self, deadline: float) -> Outcome:
        """Take a slot, waiting in the queue until ``deadline`` at most."""
        if self.in_flight < self.max_in_flight and not self._waiters:
            self.in_flight += 1
            return "admitted"
        if len(self._waiters) >= self.max_queued:
            return "rejected"
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            if waiter.done():
                # The slot was handed over just as the wait ended; the request takes it.
                return "admitted"
            self._withdraw(waiter)
            return "timed_out"
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()
            else:
                self._withdraw(waiter)
            raise
        return "admitted"

    def _withdraw(self, waiter: asyncio.Future) -> None:
        waiter.cancel()
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def release(self) -> None:
        """Free a slot, or hand it to the oldest waiting request."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_flight -= 1


class AdmissionMiddleware:
    """ASGI middleware that applies an ``AdmissionGate`` and the deadline to inference requests.

    ``respond(path, status, code, message, headers)`` builds the 429 and 504 responses, so each route
    gets its protocol's error body. ``on_event`` receives an ``AdmissionEvent`` per inference request.
    """

    def __init__(
        self,
        app,
        max_in_flight: int,
        max_queued: int,
        timeout_s: float,
        retry_after_s: int,
        respond: Callable,
        on_event: Callable[[AdmissionEvent], None] | None = None,
    ):
        self.app = app
        self.gate = AdmissionGate(max_in_flight, max_queued)
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.respond = respond
        self.on_event = on_event

    async def __call__(self, scope, receive, send) -> None:
        route = inference_route(scope)
        if route is None:
            await self.app(scope, receive, send)
            return
        arrived = time.monotonic()
        deadline = arrived + self.timeout_s
        state = scope.setdefault("state", {})
        state[DEADLINE_KEY] = deadline
        outcome = await self.gate.enter(deadline)
        if outcome == "rejected":
            await self._reject(scope, receive, send, route, arrived)
            return
        if outcome == "timed_out":
            await self._time_out(scope, receive, send, route, arrived, "waiting for a slot")
            return
        state[ADMISSION_WAIT_KEY] = time.monotonic() - arrived
        await self._run(scope, receive, send, route, arrived, deadline)

    async def _run(self, scope, receive, send, route: str, arrived: float, deadline: float) -> None:
        started = asyncio.Event()
        status: dict[str, int] = {}
        closed = False

        async def guarded_send(message) -> None:
            if closed:
                return
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                started.set()
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, guarded_send))
        task.add_done_callback(lambda _: self.gate.release())
        start_waiter = asyncio.ensure_future(started.wait())
        await asyncio.wait({task, start_waiter}, timeout=max(0.0, deadline - time.monotonic()))
        start_waiter.cancel()
        if task.done() or started.is_set():
            try:
                await task
            finally:
                self._emit(route, scope, status.get("code", 500), arrived, "completed")
            return
        closed = True
        task.add_done_callback(_log_late_failure)
        await self._time_out(scope, receive, send, route, arrived, "in progress")

    async def _reject(self, scope, receive, send, route: str, arrived: float) -> None:
        message = (
            f"the service is at capacity: {self.gate.in_flight} requests in flight and "
            f"{self.gate.queued} queued (MAX_CONCURRENT_REQUESTS={self.gate.max_in_flight}, "
            f"MAX_QUEUED_REQUESTS={self.gate.max_queued}); retry after {self.retry_after_s} s"
        )
        headers = {"Retry-After": str(self.retry_after_s)}
        response = self.respond(scope["path"], 429, "overloaded", message, headers)
        await response(scope, receive, send)
        self._emit(route, scope, 429, arrived, "rejected")

    async def _time_out(self, scope, receive, send, route: str, arrived: float, where: str) -> None:
        message = (
            f"the request was not answered within REQUEST_TIMEOUT_S={self.timeout_s:g} s "
            f"(it was {where}); retry later or with fewer images"
        )
        response = self.respond(scope["path"], 504, "timeout", message, {})
        await response(scope, receive, send)
        self._emit(route, scope, 504, arrived, "timed_out")

    def _emit(self, route: str, scope, status: int, arrived: float, reason) -> None:
        if self.on_event is None:
            return
        event = AdmissionEvent(route, scope.get("path", ""), status, time.monotonic() - arrived, reason)
        self.on_event(event)


def _log_late_failure(task: asyncio.Task) -> None:
    """Log the error of a request's work that ended after its 504 went out, so it is not lost."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        logger.error(
            "the work of a timed-out request (504) failed afterwards: %s: %s",
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
