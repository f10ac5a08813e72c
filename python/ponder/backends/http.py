"""JSON over HTTP for the backends: one POST or GET with a timeout, retries with exponential
backoff on transient failures, and errors that say what the server answered.

Only the standard library is used (``urllib``), so the backends add no dependency.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Optional

logger = logging.getLogger(__name__)

# 408 request timeout, 429 too many requests, 5xx server trouble: worth asking again.
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class BackendError(RuntimeError):
    """A request to an inference server failed for good (after any retries): ``status`` is the
    HTTP status (None when no response came back), ``body`` the start of what the server sent."""

    def __init__(self, message: str, status: Optional[int] = None, body: str = ""):
        super().__init__(message)
        self.status, self.body = status, body


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a request is retried.

    timeout_s: seconds one attempt may take (connect + answer). max_retries: further attempts
    after the first on a connection error, a timeout or a status in ``RETRY_STATUS``.
    backoff_s: the wait before the first retry, multiplied by ``backoff_factor`` before each
    later one and capped at ``max_backoff_s``.
    """

    timeout_s: float = 120.0
    max_retries: int = 4
    backoff_s: float = 0.5
    backoff_factor: float = 2.0
    max_backoff_s: float = 8.0

    def __post_init__(self):
        for name in ("timeout_s", "backoff_s", "max_backoff_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be a number > 0, got {v!r}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {self.max_retries!r}")
        if not self.backoff_factor >= 1:
            raise ValueError(f"backoff_factor must be >= 1, got {self.backoff_factor!r}")

    def delays(self):
        """The waits before each retry, in order."""
        d = float(self.backoff_s)
        for _ in range(self.max_retries):
            yield min(d, self.max_backoff_s)
            d *= self.backoff_factor


def _snippet(raw: bytes, limit: int = 500) -> str:
    return raw[:limit].decode("utf-8", errors="replace")


def error_message(body: str) -> str:
    """The ``error.message`` (OpenAI layout) or ``message`` / ``detail`` of an error body, else the body."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    if isinstance(doc, dict):
        err = doc.get("error", doc)
        if isinstance(err, dict):
            for key in ("message", "detail"):
                if isinstance(err.get(key), str):
                    return err[key]
        if isinstance(err, str):
            return err
    return body


def request_json(url: str, payload: Optional[dict] = None, *, retry: RetryPolicy = RetryPolicy(),
                 headers: Optional[dict] = None, sleep: Callable[[float], None] = time.sleep) -> dict:
    """POST ``payload`` as JSON to ``url`` (GET when ``payload`` is None) and return the decoded
    JSON object. Transient failures are retried per ``retry``; any other HTTP error, a body that is
    not a JSON object, or running out of retries raises :class:`BackendError`."""
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    hdrs = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
    delays = retry.delays()
    attempt = 0
    while True:
        attempt += 1
        req = urllib.request.Request(url, data=data, headers=hdrs, method="GET" if data is None else "POST")
        try:
            with urllib.request.urlopen(req, timeout=retry.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            body = _snippet(err.read() or b"")
            if err.code not in RETRY_STATUS:
                raise BackendError(f"{url} answered HTTP {err.code}: {error_message(body)}", err.code, body) from None
            why = f"HTTP {err.code}: {error_message(body)}"
            status = err.code
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
            reason = getattr(err, "reason", err)
            why, status, body = f"{type(reason).__name__}: {reason}", None, ""
        else:
            try:
                doc = json.loads(raw)
            except ValueError:
                raise BackendError(f"{url} answered with a body that is not JSON: {_snippet(raw, 200)!r}",
                                   200, _snippet(raw)) from None
            if not isinstance(doc, dict):
                raise BackendError(f"{url} answered JSON {type(doc).__name__}, expected an object", 200, _snippet(raw))
            return doc
        delay = next(delays, None)
        if delay is None:
            raise BackendError(f"{url} failed after {attempt} attempt(s) (timeout {retry.timeout_s:g} s each): {why}",
                               status, body)
        logger.warning("%s: %s; retrying in %.2f s (attempt %d)", url, why, delay, attempt + 1)
        sleep(delay)
