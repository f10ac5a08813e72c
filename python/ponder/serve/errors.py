"""The one error type of the server: every rejected request becomes an OpenAI-style error body.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "ponder.budget", "code": null}}

``param`` names the offending field as a dotted path into the request body (``messages[0].content``,
``ponder.budget.expansions``), so a client can tell which value to change.
"""

from __future__ import annotations

from typing import Any, Dict, Optional


class APIError(Exception):
    """A request the server answers with ``status`` and an OpenAI-style error body."""

    def __init__(self, message: str, *, param: Optional[str] = None, status: int = 400,
                 type: str = "invalid_request_error", code: Optional[str] = None):
        super().__init__(message)
        self.message, self.param, self.status, self.type, self.code = message, param, status, type, code

    def body(self) -> Dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(param: str, message: str, code: Optional[str] = None) -> APIError:
    """A 400 for the field ``param``; the message is prefixed with the field's name."""
    return APIError(f"{param}: {message}", param=param, code=code)
