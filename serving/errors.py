"""Client errors of the HTTP API, their JSON body, and rate-limited logging of rejections.

Every error body has the shape ``{"error": {"code", "message", "item"}}`` (``serving.schemas``),
except under ``/v2``, where the Open Inference Protocol fixes it as ``{"error": "<message>"}``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.responses import JSONResponse

from serving.schemas import ErrorDetail, ErrorResponse

# Seconds between two log lines for rejections with the same code; repeats in between are counted.
REJECTION_LOG_INTERVAL_S = 10.0
OIP_PREFIX = "/v2"


def is_oip_path(path: str) -> bool:
    """Return whether ``path`` belongs to the Open Inference Protocol routes."""
    return path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/")


class ClientError(Exception):
    """A request the service rejects: the HTTP status, a stable code, and the part it is about."""

    def __init__(self, status: int, code: str, message: str, item: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.item = item

    def to_response(self) -> JSONResponse:
        return error_response(self.status, self.code, self.message, self.item)


def error_response(status: int, code: str, message: str, item: str | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(code=code, message=message, item=item))
    return JSONResponse(body.model_dump(), status_code=status)


def oip_error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def route_error_response(
    path: str, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """Build an error response in the shape of the route's protocol: OIP under ``/v2``, else ours."""
    if is_oip_path(path):
        response = oip_error_response(status, message)
    else:
        response = error_response(status, code, message)
    response.headers.update(headers or {})
    return response


@dataclass
class _CodeState:
    logged_at: float
    suppressed: int = 0


class RejectionLog:
    """Log each rejection with its reason, at most one line per code per ``interval_s``.

    Rejections inside the interval are counted, and the next line for that code reports how many
    were not logged. ``counts`` contains the total per code since the process started.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = REJECTION_LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        level: int = logging.INFO,
    ):
        self.logger = logger
        self.level = level
        self.interval_s = interval_s
        self.clock = clock
        self.counts: dict[str, int] = {}
        self._states: dict[str, _CodeState] = {}
        self._lock = threading.Lock()

    def record(self, error: ClientError) -> bool:
        """Count the rejection and log it unless its code was logged less than an interval ago.

        Returns whether a line was logged.
        """
        with self._lock:
            self.counts[error.code] = self.counts.get(error.code, 0) + 1
            now = self.clock()
            state = self._states.get(error.code)
            if state is not None and now - state.logged_at < self.interval_s:
                state.suppressed += 1
                return False
            suppressed = state.suppressed if state is not None else 0
            self._states[error.code] = _CodeState(logged_at=now)
        repeats = (
            f" ({suppressed} more '{error.code}' rejections since the previous line were not logged)"
            if suppressed
            else ""
        )
        self.logger.log(
            self.level,
            "rejected request: %d %s: %s (item %r)%s",
            error.status,
            error.code,
            error.message,
            error.item,
            repeats,
        )
        return True


_STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    500: "internal_error",
    503: "service_unavailable",
    504: "timeout",
}


def _is_error_shape(body: bytes, oip: bool = False) -> bool:
    try:
        payload = json.loads(body)
    except ValueError:
        return False
    if not isinstance(payload, dict):
        return False
    if oip:
        return isinstance(payload.get("error"), str)
    return isinstance(payload.get("error"), dict) and "code" in payload["error"]


def _message_of(body: bytes) -> str:
    """Return the message of a plain-text body, or of BentoML's and FastAPI's JSON error bodies."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        return text
    if isinstance(payload, list) and payload:
        payload = payload[0]
    if isinstance(payload, dict):
        for key in ("error", "detail"):
            if isinstance(payload.get(key), str):
                return payload[key]
    return text


class JSONErrorMiddleware:
    """ASGI middleware that gives every error response the ``{"error": {...}}`` body.

    A response with status 400 or more that is not in that shape yet is rewritten. Such responses
    are Starlette's plain-text 404 and 405, BentoML's ``{"error": "..."}`` and its ``/readyz`` 503.
    Under ``/v2`` the target shape is the Open Inference Protocol's ``{"error": "<message>"}``.
    Other responses stream through untouched. ``not_ready_reason`` supplies the message of a ``/readyz``
    503, so a client sees why the process is not ready.
    """

    def __init__(self, app, not_ready_reason: Callable[[], str | None] | None = None):
        self.app = app
        self.not_ready_reason = not_ready_reason

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held_start: dict = {}
        body = bytearray()

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held_start["message"] = message
                return
            if "message" not in held_start or message["type"] != "http.response.body":
                await send(message)
                return
            body.extend(message.get("body", b""))
            if not message.get("more_body", False):
                await self._send_error(scope, held_start["message"], bytes(body), send)

        await self.app(scope, receive, send_wrapper)

    async def _send_error(self, scope, start: dict, body: bytes, send) -> None:
        status = start["status"]
        path = scope.get("path", "")
        oip = is_oip_path(path)
        if _is_error_shape(body, oip):
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        message = _message_of(body) or f"HTTP {status}"
        code = _STATUS_CODES.get(status, "error")
        if path.endswith("/readyz") and status == 503 and self.not_ready_reason is not None:
            code, message = "not_ready", self.not_ready_reason() or message
        response = oip_error_response(status, message) if oip else error_response(status, code, message)
        headers = [
            (name, value)
            for name, value in start.get("headers", [])
            if name.lower() not in (b"content-length", b"content-type")
        ]
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(response.body)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})


class ModelOverloadedError(Exception):
    """The model process declined a batch it predicted would miss ``MAX_LATENCY_MS`` (BentoML's 503)."""


class RequestTimedOutError(Exception):
    """A request passed its deadline (``REQUEST_TIMEOUT_S``) before its work finished."""
