"""Readiness of a service process and its drain on SIGTERM.

A ``Lifecycle`` is ``starting`` until its startup checks pass (``ready``) or fail for good
(``failed``); SIGTERM turns it ``draining``. Only ``ready`` makes ``/readyz`` return 200. Every
change of state is logged once with its reason, so a probe that polls ``/readyz`` adds no log lines.

On SIGTERM the process first turns not ready, then waits for ``drain`` (an awaitable the service
supplies), and only then hands the signal to uvicorn, which stops accepting connections, lets the
requests in flight finish, and exits. Repeated SIGTERMs during the drain are logged and ignored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Literal

logger = logging.getLogger(__name__)

State = Literal["starting", "ready", "failed", "draining"]
# How often the model process looks for front-end processes that are still running while it drains.
_SIBLING_POLL_S = 0.1


class TransientCheckError(Exception):
    """A startup check could not run yet (for example the model process is still starting)."""


class Lifecycle:
    """Readiness state of one service process."""

    def __init__(self, name: str):
        self.name = name
        self.state: State = "starting"
        self.reason = "startup checks have not run yet"
        self._lock = threading.Lock()
        self._check_task: asyncio.Task | None = None
        self._drain_task: asyncio.Task | None = None

    @property
    def is_ready(self) -> bool:
        return self.state == "ready"

    def _set(
        self, state: State, reason: str, level: int = logging.INFO, exc: BaseException | None = None
    ) -> None:
        with self._lock:
            if self.state == "draining" and state != "draining":
                return
            changed = (state, reason) != (self.state, self.reason)
            self.state, self.reason = state, reason
        if changed:
            logger.log(level, "%s state %s: %s", self.name, state, reason, exc_info=exc)

    def mark_ready(self, reason: str) -> None:
        self._set("ready", reason)

    def mark_failed(self, reason: str, exc: BaseException | None = None) -> None:
        self._set("failed", reason, logging.ERROR, exc)

    def mark_waiting(self, reason: str) -> None:
        self._set("starting", reason)

    def mark_draining(self, reason: str) -> None:
        self._set("draining", reason, logging.WARNING)

    async def check_once(self, run_checks: Callable[[], Awaitable[str]], wait_s: float = 1.0) -> bool:
        """Run ``run_checks`` in the background until it passes or fails for good; return readiness.

        ``run_checks`` returns a summary for the log, raises TransientCheckError to be run again at
        the next call, and raises anything else to fail readiness for good. A call waits at most
        ``wait_s`` for a check in progress, so a probe with a short timeout still gets a response.
        """
        if self.state == "starting" and (self._check_task is None or self._check_task.done()):
            self._check_task = asyncio.create_task(self._run_checks(run_checks))
        if self._check_task is not None and not self._check_task.done():
            await asyncio.wait({self._check_task}, timeout=wait_s)
        return self.is_ready

    async def _run_checks(self, run_checks: Callable[[], Awaitable[str]]) -> None:
        try:
            summary = await run_checks()
        except TransientCheckError as exc:
            self.mark_waiting(str(exc))
        except Exception as exc:
            # Any other error fails readiness for good, logged with its traceback, because a process
            # whose checks raised must not report ready.
            self.mark_failed(f"{type(exc).__name__}: {exc}", exc)
        else:
            self.mark_ready(summary)

    def install_sigterm_drain(self, drain: Callable[[], Awaitable[None]]) -> bool:
        """Put a SIGTERM handler in front of uvicorn's that turns not ready and drains first.

        Must run in the main thread while the event loop runs (a BentoML service's ``__init__``
        does). Returns False, changing nothing, anywhere else.
        """
        if threading.current_thread() is not threading.main_thread():
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: object) -> None:
            if self._drain_task is not None:
                logger.info("%s: SIGTERM again while draining; still draining", self.name)
                return
            self.mark_draining("SIGTERM received; finishing the requests in flight before exiting")
            loop.call_soon_threadsafe(self._start_drain, loop, drain, previous, signum)

        signal.signal(signal.SIGTERM, on_sigterm)
        return True

    def _start_drain(self, loop, drain, previous, signum: int) -> None:
        self._drain_task = loop.create_task(self._drain(drain, previous, signum))

    async def _drain(self, drain: Callable[[], Awaitable[None]], previous, signum: int) -> None:
        started = time.monotonic()
        await drain()
        logger.info("%s: drained after %.1f s; shutting down", self.name, time.monotonic() - started)
        if callable(previous):
            previous(signum, None)
        else:
            signal.signal(signal.SIGTERM, previous)
            os.kill(os.getpid(), signum)


async def wait_for_siblings(own_service: str, timeout_s: float) -> None:
    """Wait until the other services' workers started by the same BentoML server have exited.

    The model process must outlive the front end, which still calls it for the requests in flight,
    but ``bentoml serve`` sends SIGTERM to every worker at once. The workers are the children of the
    ``bentoml serve`` process; those whose command line names ``own_service`` are this service's.
    """
    import psutil

    deadline = time.monotonic() + timeout_s
    marker = f"--service-name {own_service}"
    while time.monotonic() < deadline:
        try:
            siblings = psutil.Process(os.getppid()).children()
        except psutil.Error:
            return
        others = []
        for process in siblings:
            try:
                if process.pid != os.getpid() and marker not in " ".join(process.cmdline()):
                    others.append(process)
            except psutil.Error:
                continue
        if not others:
            return
        await asyncio.sleep(_SIBLING_POLL_S)
    logger.warning(
        "%s: other service workers still running after %.0f s; exiting anyway", own_service, timeout_s
    )
