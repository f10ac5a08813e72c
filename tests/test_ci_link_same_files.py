"""``.ci/link_same_files.py``: CI's venvs share identical files as hard links, and nothing else."""

import importlib.util
import os
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "link_same_files.py"


def _module():
    spec = importlib.util.spec_from_file_location("link_same_files", _SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_links_identical_files_and_leaves_the_rest(tmp_path):
    ref, tgt = tmp_path / "ref", tmp_path / "tgt"
    same = [_write(ref / "lib" / "a.py", b"x" * 5000), _write(ref / "lib" / "deep" / "b.so", b"\0\1" * 99)]
    _write(tgt / "lib" / "a.py", b"x" * 5000)
    _write(tgt / "lib" / "deep" / "b.so", b"\0\1" * 99)
    _write(ref / "lib" / "c.py", b"reference text")
    _write(tgt / "lib" / "c.py", b"reference texT")      # same size, other bytes
    _write(ref / "lib" / "d.py", b"short")
    _write(tgt / "lib" / "d.py", b"longer text")          # other size
    _write(ref / "bin" / "tool", b"#!/bin/sh\n", 0o755)
    _write(tgt / "bin" / "tool", b"#!/bin/sh\n", 0o644)   # other mode
    _write(tgt / "only_here.txt", b"mine")
    os.symlink("a.py", tgt / "lib" / "link.py")
    _write(ref / "lib" / "link.py", b"x" * 5000)

    files, saved = _module().link_same_files(str(ref), str(tgt))

    assert (files, saved) == (2, 5000 + 198)
    for r in same:
        t = tgt / r.relative_to(ref)
        assert os.stat(t).st_ino == os.stat(r).st_ino and t.read_bytes() == r.read_bytes()
    for rel in ("lib/c.py", "lib/d.py", "bin/tool"):
        assert os.stat(tgt / rel).st_ino != os.stat(ref / rel).st_ino
    assert (tgt / "lib" / "c.py").read_bytes() == b"reference texT"
    assert (tgt / "lib" / "link.py").is_symlink()
    assert (tgt / "only_here.txt").read_bytes() == b"mine"
    assert not list(tgt.rglob("*.link-tmp"))
    # A second pass finds everything already shared.
    assert _module().link_same_files(str(ref), str(tgt)) == (0, 0)


def test_replacing_a_linked_file_leaves_its_twin(tmp_path):
    ref, tgt = tmp_path / "ref", tmp_path / "tgt"
    r = _write(ref / "m.py", b"version 1")
    t = _write(tgt / "m.py", b"version 1")
    _module().link_same_files(str(ref), str(tgt))
    # pip upgrades a file by removing it and writing a new one.
    t.unlink()
    _write(t, b"version 2")
    assert r.read_bytes() == b"version 1"


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(SystemExit, match="TARGET must be a directory"):
        _module().link_same_files(str(tmp_path), str(tmp_path / "nope"))
