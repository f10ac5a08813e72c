"""The JSON form of a :class:`~ponder.search.result.SearchResult`: version, schema, consistency.

A result's JSON is one object: ``format_version`` (:data:`FORMAT_VERSION`), the result's
fields (:data:`FIELDS`), per-node arrays under ``nodes`` (:data:`NODE_ARRAYS`, all of one
length N, index 0 the root) and figures under ``stats``. For example, a root with two children
and the answer on the second::

    "nodes": {"parent": [-1, 0, 0], "tokens": [[1], [1], [2]], "depth": [0, 1, 1], ...},
    "path": [0, 2], "answer_tokens": [2]

:func:`decode` accepts only what :func:`encode` could have written: every field present with
its type, parents before their children, a path that follows the parent links from the root,
and answer tokens that are the path's tokens. Anything else raises ``ValueError`` naming the
field, so a result read back can always be drawn (``to_dot``) and turned into training data.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Tuple

from ponder.search.budget import STOP_REASONS

FORMAT_VERSION = 1


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int_list(v: Any) -> bool:
    return isinstance(v, list) and all(_is_int(t) for t in v)


# kind -> (test, how the error message names it)
_KINDS: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "int": (_is_int, "an int"),
    "number": (_is_number, "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "int_list": (_is_int_list, "a list of ints"),
    "object": (lambda v: isinstance(v, dict), "an object"),
    "optional_str": (lambda v: v is None or isinstance(v, str), "a string or null"),
}

FIELDS = {"algorithm": "str", "problem_index": "int", "answer": "str", "answer_tokens": "int_list",
          "verified": "bool", "score": "number", "stop_reason": "str", "path": "int_list", "nodes": "object",
          "stats": "object", "error": "optional_str"}
NODE_ARRAYS = {"parent": "int", "tokens": "int_list", "text": "str", "visits": "int", "value": "number",
               "reward": "number", "path_score": "number", "terminal": "bool", "depth": "int", "prior": "number"}
STATS_NUMBERS = ("tokens_generated", "tokens_prefilled", "expansions", "iterations", "model_calls", "wall_time",
                 "peak_kv_bytes", "prefix_hit_rate")


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(where: str, expected: str, got: Any) -> ValueError:
    return ValueError(f"SearchResult JSON: {where} must be {expected}, got {_show(got)}")


def _check(where: str, kind: str, value: Any) -> None:
    test, name = _KINDS[kind]
    if not test(value):
        raise _fail(where, name, value)


def encode(fields: Dict[str, Any]) -> Dict[str, Any]:
    """The JSON object of a result's public ``fields``, tagged with :data:`FORMAT_VERSION`."""
    return {"format_version": FORMAT_VERSION, **fields}


def decode(text: Any) -> Dict[str, Any]:
    """Parse and check a JSON text written by :func:`encode`; returns the result's fields."""
    if not isinstance(text, (str, bytes, bytearray)):
        raise TypeError(f"SearchResult.from_json needs a JSON string, got {type(text).__name__}")
    try:
        data = json.loads(text)
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
        raise ValueError(f"SearchResult JSON is not valid JSON (truncated or corrupted?): {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"SearchResult JSON must be an object, got {type(data).__name__} {_show(data)}")
    _check_version(data)
    fields = {k: v for k, v in data.items() if k != "format_version"}
    fields.setdefault("error", None)  # only failed problems carry one
    _check_keys(fields, FIELDS, "missing field(s)", f"unknown field(s) {{}} for format_version {FORMAT_VERSION}")
    for name, kind in FIELDS.items():
        _check(name, kind, fields[name])
    if fields["problem_index"] < 0:
        raise _fail("problem_index", "an int >= 0", fields["problem_index"])
    if fields["stop_reason"] not in STOP_REASONS:
        raise _fail("stop_reason", f"one of {', '.join(STOP_REASONS)}", fields["stop_reason"])
    _check_nodes(fields["nodes"])
    _check_path(fields)
    _check_stats(fields["stats"], fields["stop_reason"])
    return fields


def _check_keys(given: Dict[str, Any], expected: Dict[str, str], missing_msg: str, unknown_msg: str) -> None:
    """ValueError when ``given`` lacks a key of ``expected`` or has one it does not know."""
    missing = [k for k in expected if k not in given]
    if missing:
        raise ValueError(f"SearchResult JSON: {missing_msg} {missing}")
    unknown = sorted(set(given) - set(expected))
    if unknown:
        raise ValueError("SearchResult JSON: " + unknown_msg.format(unknown))


def _check_version(data: Dict[str, Any]) -> None:
    if "format_version" not in data:
        raise ValueError("SearchResult JSON: missing format_version (not written by SearchResult.to_json, or "
                         f"by a ponder older than format_version {FORMAT_VERSION})")
    version = data["format_version"]
    if not _is_int(version):
        raise _fail("format_version", "an int", version)
    if version != FORMAT_VERSION:
        raise ValueError(f"SearchResult JSON: unsupported format_version {version}: this ponder reads "
                         f"format_version {FORMAT_VERSION}")


def _check_nodes(nodes: Dict[str, Any]) -> None:
    _check_keys(nodes, NODE_ARRAYS, "nodes is missing the array(s)", "nodes has unknown array(s) {}")
    for name, kind in NODE_ARRAYS.items():
        array = nodes[name]
        if not isinstance(array, list):
            raise _fail(f"nodes.{name}", "an array", array)
        for i, value in enumerate(array):
            _check(f"nodes.{name}[{i}]", kind, value)
    lengths = {name: len(nodes[name]) for name in NODE_ARRAYS}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"SearchResult JSON: the arrays of nodes must all have one length (one entry per "
                         f"node), got lengths {lengths}")
    parent, depth, visits = nodes["parent"], nodes["depth"], nodes["visits"]
    if not parent:
        raise ValueError("SearchResult JSON: nodes must hold at least the root, got empty arrays")
    if parent[0] != -1:
        raise _fail("nodes.parent[0]", "-1 (node 0 is the root)", parent[0])
    for i in range(1, len(parent)):
        if not 0 <= parent[i] < i:
            raise _fail(f"nodes.parent[{i}]", f"a node index in [0, {i}) (parents precede their children)",
                        parent[i])
        if depth[i] != depth[parent[i]] + 1:
            raise _fail(f"nodes.depth[{i}]", f"its parent's depth + 1 = {depth[parent[i]] + 1}", depth[i])
    for i, v in enumerate(visits):
        if v < 0:
            raise _fail(f"nodes.visits[{i}]", "an int >= 0", v)


def _check_path(fields: Dict[str, Any]) -> None:
    path, parent, tokens = fields["path"], fields["nodes"]["parent"], fields["nodes"]["tokens"]
    if not path or path[0] != 0:
        raise _fail("path", "a list of node indices that starts at the root 0", path)
    for k, node in enumerate(path):
        if not 0 <= node < len(parent):
            raise _fail(f"path[{k}]", f"a node index in [0, {len(parent)})", node)
        if k and parent[node] != path[k - 1]:
            raise _fail(f"path[{k}]", f"a child of path[{k - 1}] = {path[k - 1]} (the parent of node {node} is "
                        f"{parent[node]})", node)
    expected: List[int] = [t for node in path[1:] for t in tokens[node]]
    if fields["answer_tokens"] != expected:
        raise _fail("answer_tokens", f"the tokens of the path's nodes after the root, {_show(expected)}",
                    fields["answer_tokens"])


def _check_stats(stats: Dict[str, Any], stop_reason: str) -> None:
    for name in STATS_NUMBERS:
        if name not in stats:
            raise ValueError(f"SearchResult JSON: stats is missing {name!r}")
    for name, value in stats.items():
        if name == "stop_reason":
            if value != stop_reason:
                raise _fail("stats.stop_reason", f"the result's stop_reason {stop_reason!r}", value)
        else:
            _check(f"stats.{name}", "number", value)
