"""Rules the native sources keep that no build on this machine would catch by itself."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NATIVE = sorted(p for d in ("csrc", "kernels/cuda") for p in (ROOT / d).rglob("*")
                if p.suffix in {".h", ".hpp", ".cpp", ".cc", ".cu", ".cuh"})
STREAMS = re.compile(r"#\s*include\s*<(sstream|iostream|ostream|istream|fstream|iomanip)>|\bstd::(o|i)?stringstream\b"
                     r"|\bstd::(cout|cerr|clog)\b")


def test_the_native_sources_are_found():
    names = {p.name for p in NATIVE}
    assert {"common.h", "page_table.cpp", "linear_cpu.cpp"} <= names


def test_no_iostreams_in_the_extension():
    # A toolchain that links libstdc++ statically into _core (seen: Ubuntu's GCC 13 in a CUDA
    # image) gives the process two locale registries once numpy or torch has loaded the shared
    # libstdc++; `stream << 5` then called the wrong facet and every refusal that formats a
    # number crashed with SIGSEGV instead of raising. Messages are built with detail::concat.
    offenders = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
                 for p in NATIVE for i, line in enumerate(p.read_text().splitlines(), 1)
                 if STREAMS.search(line.split("//")[0])]
    assert offenders == [], "iostreams in the native sources:\n" + "\n".join(offenders)
