"""Problems in, results out: JSONL files, one JSON object per line.

A problems file holds one object per line with a unique ``"id"`` (str or int) and the fields its
task reads: ``"prompt"`` for text problems, ``"numbers"`` and ``"target"`` (and optionally
``"all_numbers"``) for Countdown. A results file gets one object per finished problem, appended
and flushed as it finishes; re-opening the same file skips the ids already in it, so an
interrupted run resumes where it stopped. A last line cut short by the interruption is dropped.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Set

TASKS = ("text", "countdown")


def _check_problem(doc, where: str, task: str) -> dict:
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    pid = doc.get("id")
    if isinstance(pid, bool) or not isinstance(pid, (str, int)) or pid == "":
        raise ValueError(f"{where}: 'id' must be a non-empty str or an int, got {pid!r}")
    if task == "text":
        if not isinstance(doc.get("prompt"), str) or not doc["prompt"]:
            raise ValueError(f"{where}: a text problem needs a non-empty 'prompt' string, got {doc.get('prompt')!r}")
    else:
        nums = doc.get("numbers")
        if not isinstance(nums, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in nums):
            raise ValueError(f"{where}: a countdown problem needs 'numbers', a list of ints, got {nums!r}")
        if isinstance(doc.get("target"), bool) or not isinstance(doc.get("target"), int):
            raise ValueError(f"{where}: a countdown problem needs an int 'target', got {doc.get('target')!r}")
    return doc


def check_problems(problems: List[dict], task: str) -> List[dict]:
    """Validate problem dicts for ``task``; ids must be unique. Returns them."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    seen: Set[str] = set()
    for i, doc in enumerate(problems):
        _check_problem(doc, f"problem {i}", task)
        key = record_key(doc["id"])
        if key in seen:
            raise ValueError(f"problem {i}: id {doc['id']!r} appears twice; ids must be unique")
        seen.add(key)
    return problems


def read_problems(path: str, task: str) -> List[dict]:
    """The problems of a JSONL file (blank lines skipped); errors name the file and line."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"problems file {path!r} does not exist")
    out, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                doc = json.loads(line)
            except ValueError as err:
                raise ValueError(f"{where}: not valid JSON ({err})") from None
            _check_problem(doc, where, task)
            key = record_key(doc["id"])
            if key in seen:
                raise ValueError(f"{where}: id {doc['id']!r} already used on line {seen[key]}; ids must be unique")
            seen[key] = n
            out.append(doc)
    if not out:
        raise ValueError(f"problems file {path!r} holds no problems")
    return out


def record_key(pid) -> str:
    """Ids compare as JSON text, so 7 and "7" stay different problems."""
    return json.dumps(pid)


class ResultsFile:
    """An append-only JSONL results file that knows which ids it already holds."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"the directory of the results file {self.path!r} does not exist")
        self.done: Dict[str, dict] = {}
        if os.path.exists(self.path):
            self._load()
        self._file = open(self.path, "a", encoding="utf-8")

    def _load(self) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        keep = data.rfind(b"\n") + 1  # a line without its newline was cut short by an interruption
        if keep < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(keep)
        for n, line in enumerate(data[:keep].decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                raise ValueError(f"{self.path}:{n} is not valid JSON: is this a ponder results file?") from None
            if not isinstance(doc, dict) or "id" not in doc:
                raise ValueError(f"{self.path}:{n} has no 'id': is this a ponder results file?")
            self.done[record_key(doc["id"])] = doc

    def __contains__(self, pid) -> bool:
        return record_key(pid) in self.done

    def write(self, record: dict) -> bool:
        """Append ``record`` unless its id is already there; flushed to disk at once. Returns
        whether it was written."""
        key = record_key(record["id"])
        if key in self.done:
            return False
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done[key] = record
        return True

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
