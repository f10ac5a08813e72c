"""Search many problems at once, in process or sharded over Ray actors (one engine each), with
one resumable JSONL record per problem. Ray is optional: ``pip install 'ponder[distributed]'``.

The names below are imported on first use, so the command line's ``--help`` loads neither torch
nor Ray.
"""

from importlib import import_module

_EXPORTS = {
    "ResultsFile": "ponder.distributed.records",
    "RunSpec": "ponder.distributed.searcher",
    "RunSummary": "ponder.distributed.runner",
    "Searcher": "ponder.distributed.searcher",
    "read_problems": "ponder.distributed.records",
    "run": "ponder.distributed.runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ponder.distributed' has no attribute {name!r}")
    return getattr(import_module(module), name)


def __dir__():
    return __all__
