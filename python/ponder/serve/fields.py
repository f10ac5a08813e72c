"""Typed reads of JSON request fields; each failure is a 400 naming the field's path."""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Optional, Tuple

from ponder.serve.errors import invalid

_MISSING = object()


def obj(value: Any, path: str) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid(path, f"must be a JSON object, got {json_type(value)}")
    return value


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (what a client wrote)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def check_keys(body: Dict[str, Any], allowed: Iterable[str], path: str = "") -> None:
    """Reject a key outside ``allowed``, naming it and the accepted ones."""
    allowed = set(allowed)
    for key in body:
        if key not in allowed:
            where = f"{path}.{key}" if path else key
            raise invalid(where, f"unknown field; accepted fields{' of ' + path if path else ''}: "
                                 f"{', '.join(sorted(allowed))}", code="unknown_field")


def integer(body: Dict[str, Any], key: str, path: str, lo: int, hi: Optional[int] = None, default: Any = _MISSING):
    value = body.get(key)
    if value is None and default is not _MISSING:
        return default
    expected = f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}"
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        raise invalid(path, f"must be {expected}, got {value!r}")
    return value


def number(body: Dict[str, Any], key: str, path: str, lo: float, hi: Optional[float] = None,
           lo_open: bool = False, default: Any = _MISSING):
    value = body.get(key)
    if value is None and default is not _MISSING:
        return default
    low = f"> {lo}" if lo_open else f">= {lo}"
    expected = f"a finite number {low}" + (f" and <= {hi}" if hi is not None else "")
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value < lo or (lo_open and value == lo) or (hi is not None and value > hi)):
        raise invalid(path, f"must be {expected}, got {value!r}")
    return float(value)


def boolean(body: Dict[str, Any], key: str, path: str, default: Any = _MISSING):
    value = body.get(key)
    if value is None and default is not _MISSING:
        return default
    if not isinstance(value, bool):
        raise invalid(path, f"must be true or false, got {value!r}")
    return value


def choice(body: Dict[str, Any], key: str, path: str, choices: Iterable[str], default: Any = _MISSING):
    value = body.get(key)
    if value is None and default is not _MISSING:
        return default
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise invalid(path, f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def string(body: Dict[str, Any], key: str, path: str, default: Any = _MISSING) -> str:
    value = body.get(key)
    if value is None and default is not _MISSING:
        return default
    if not isinstance(value, str) or not value:
        raise invalid(path, f"must be a non-empty string, got {value!r}")
    return value


def stop_strings(value: Any, path: str) -> Tuple[str, ...]:
    """OpenAI ``stop``: null, a string, or a list of up to 4 non-empty strings."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not 1 <= len(items) <= 4:
        raise invalid(path, f"must be a string or a list of 1 to 4 strings, got {value!r}")
    for i, s in enumerate(items):
        if not isinstance(s, str) or not s:
            raise invalid(f"{path}[{i}]" if isinstance(value, list) else path,
                          f"must be a non-empty string, got {s!r}")
    return tuple(items)


def neutral(body: Dict[str, Any], key: str, allowed: Tuple[Any, ...], why: str) -> None:
    """Accept an OpenAI field only at a value that changes nothing here (e.g. a 0 penalty)."""
    if key in body and body[key] not in allowed:
        raise invalid(key, f"only {' or '.join(json_repr(a) for a in allowed)} is supported ({why}), "
                           f"got {body[key]!r}", code="unsupported_value")


def json_repr(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
