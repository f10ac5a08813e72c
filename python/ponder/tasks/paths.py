"""Output directories checked before long work: a training run must not fail at its last step
because its directory cannot be written."""

from __future__ import annotations

import os
import tempfile


def ensure_writable_dir(path, name: str = "out_dir") -> str:
    """Create directory ``path`` (and its parents) if needed and write a probe file in it; returns
    the path as a str. ``name`` is the argument named in the errors: ``TypeError`` for a
    non-path, ``ValueError`` for an empty path, a file, or a directory that cannot be written."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a directory path, got {type(path).__name__}")
    path = os.fspath(path)
    if not path:
        raise ValueError(f"{name} must be a directory path, got an empty string")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{name} must be a directory, got the file {path!r}")
    try:
        os.makedirs(path, exist_ok=True)
        # access(W_OK) says yes to root even where writes fail (read-only mounts, /proc): write
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ValueError(f"{name} must be a writable directory, got {path!r} ({err.strerror or err})") from None
    return path
