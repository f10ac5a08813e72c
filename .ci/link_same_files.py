"""Make identical files of two Python environments share their disk blocks.

    python .ci/link_same_files.py REFERENCE TARGET

Every regular file under TARGET whose twin at the same relative path under REFERENCE has the
same bytes is replaced by a hard link to that twin. CI keeps three environments on one disk
(its own venv, vLLM's venv and the venv the wheel is tried in), and all three hold the same
CPU torch and more; linking them saves gigabytes on a small CI disk. Each environment still
has every one of its files: pip replaces a file by unlinking it, never by writing into it, so
an upgrade in one environment leaves the other alone. Symbolic links, files that differ and
files on another file system are left as they are. Prints one line to stderr: files linked
and bytes saved.
"""

from __future__ import annotations

import errno
import filecmp
import os
import sys


def link_same_files(reference: str, target: str) -> tuple[int, int]:
    """Hard-link TARGET's files to REFERENCE's byte-identical twins; return (files, bytes)."""
    for name, path in (("REFERENCE", reference), ("TARGET", target)):
        if not os.path.isdir(path):
            raise SystemExit(f"link_same_files: {name} must be a directory, got {path!r}")
    files = saved = 0
    for root, _dirs, names in os.walk(target):
        for name in names:
            mine = os.path.join(root, name)
            twin = os.path.join(reference, os.path.relpath(mine, target))
            if os.path.islink(mine) or os.path.islink(twin) or not os.path.isfile(twin):
                continue
            st_mine, st_twin = os.stat(mine), os.stat(twin)
            if (st_mine.st_ino == st_twin.st_ino and st_mine.st_dev == st_twin.st_dev) \
                    or st_mine.st_size != st_twin.st_size or st_mine.st_mode != st_twin.st_mode:
                continue
            if not filecmp.cmp(mine, twin, shallow=False):
                continue
            staged = mine + ".link-tmp"
            try:
                os.link(twin, staged)
            except OSError as exc:
                if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    return files, saved  # another file system, or links refused: nothing to share
                raise
            os.replace(staged, mine)  # atomic: the path always names a whole file
            files += 1
            saved += st_mine.st_size
    return files, saved


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    files, saved = link_same_files(argv[0], argv[1])
    print(f"link_same_files: {argv[1]} shares {files} files ({saved / 2**30:.2f} GiB) with {argv[0]}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
