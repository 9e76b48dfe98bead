"""``POST /api/publish`` and ``GET /api/presence`` with the standard library (no HTTP
dependency).

Blocking; the async paths run it in a worker thread with ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ._phoenix import dumps
from .errors import (
    InvalidEventError,
    InvalidMessageError,
    InvalidTopicError,
    MessageTooLargeError,
    NoPresenceError,
    PresenceError,
    PublishError,
)

__all__ = ["list_presence", "publish"]


def publish(
    base_url: str,
    topic: str,
    event: str,
    payload: Any,
    *,
    api_key: str | None,
    timeout: float,
) -> int:
    """Publishes and returns the number of this node's sockets it was queued for.

    Raises :class:`PublishError` when the node did not accept it (503 upstream unavailable or
    refused, 401, unreachable, timeout) and the input errors for a 400 / 413.
    """
    body = dumps({"topic": topic, "event": event, "payload": payload}).encode("utf-8")
    headers = {"content-type": "application/json", "accept": "application/json"}
    if api_key is not None:
        headers["authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(
        f"{base_url}/api/publish", data=body, headers=headers, method="POST"
    )
    try:
        status, text = _call(request, base_url, timeout)
    except _TransportError as exc:
        raise PublishError(topic, exc.code, exc.message) from None

    answer = _json_object(text)
    if status == 200 and answer.get("ok") is True:
        recipients = answer.get("recipients")
        return recipients if isinstance(recipients, int) else 0

    raw_error = answer.get("error")
    error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
    code = str(error.get("code", f"http_{status}"))
    message = str(error.get("message", text[:200].decode("utf-8", "replace")))
    recipients = answer.get("recipients")
    recipients = recipients if isinstance(recipients, int) else None
    if status == 400:
        if code == "invalid_topic":
            raise InvalidTopicError(topic, message)
        if code == "invalid_event":
            raise InvalidEventError(message)
        raise InvalidMessageError(f"the node refused the body ({code}): {message}")
    if status == 413:
        raise MessageTooLargeError(
            f"the node refused the message as too large ({code}): {message}",
            size=error.get("size") if isinstance(error.get("size"), int) else len(body),
            limit=error.get("limit") if isinstance(error.get("limit"), int) else None,
        )
    raise PublishError(
        topic,
        code,
        message,
        delivered_locally=code == "upstream_unavailable",
        recipients=recipients,
        status=status,
    )


def list_presence(
    base_url: str, topic: str, *, api_key: str | None, timeout: float
) -> dict[str, Any]:
    """``GET /api/presence?topic=...``: the node's answer, ``{"topic", "keys", "members",
    "presences": {key: {"metas": [...]}}}``.

    Raises :class:`NoPresenceError` (404 ``no_presence``), :class:`PresenceError` for
    anything else that is not a list (``unauthorized``, ``unavailable``, ``unreachable``,
    ``timeout``, ...) and :class:`InvalidTopicError` for a 400.
    """
    query = urllib.parse.urlencode({"topic": topic})
    headers = {"accept": "application/json"}
    if api_key is not None:
        headers["authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(f"{base_url}/api/presence?{query}", headers=headers)
    try:
        status, text = _call(request, base_url, timeout)
    except _TransportError as exc:
        raise PresenceError(topic, exc.code, exc.message) from None
    answer = _json_object(text)
    if status == 200 and isinstance(answer.get("presences"), dict):
        return answer
    raw_error = answer.get("error")
    error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
    code = str(error.get("code", f"http_{status}"))
    message = str(error.get("message", text[:200].decode("utf-8", "replace")))
    if status == 400 and code == "invalid_topic":
        raise InvalidTopicError(topic, message)
    if status == 404 and code == "no_presence":
        raise NoPresenceError(topic, message, status=status)
    if code == "presence_unavailable":
        code = "unavailable"
    raise PresenceError(topic, code, message, status=status)


class _TransportError(Exception):
    """No HTTP answer: ``code`` is ``timeout`` or ``unreachable``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _call(request: urllib.request.Request, base_url: str, timeout: float) -> tuple[int, bytes]:
    """The status and body of the node's answer, whatever the status."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status: int = response.status
            text: bytes = response.read()
            return status, text
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, exc.read()
        finally:
            exc.close()
    except (TimeoutError, socket.timeout):
        raise _TransportError("timeout", f"no answer from {base_url} within {timeout}s") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise _TransportError(
                "timeout", f"no answer from {base_url} within {timeout}s"
            ) from None
        raise _TransportError("unreachable", f"{base_url}: {reason}") from None


def _json_object(text: bytes) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
