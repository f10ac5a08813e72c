"""Triton kernel tests: compiled on a CUDA device when there is one, else through Triton's CPU
interpreter (``TRITON_INTERPRET=1``).

Triton reads TRITON_INTERPRET when it is imported (its standard library is decorated then) and
while a kernel is interpreted, but the op registry offers the "triton" backend for CPU tensors
whenever the variable is set. So this conftest imports Triton with the variable set and then
restores the environment; each CPU test here sets it again, and the rest of the suite keeps
resolving ``backend="auto"`` to the torch reference. The interpreter is slow and mishandles bf16
arithmetic: CPU cases are tiny and fp32; cases marked ``gpu`` add bf16 / fp16.
"""

import os
import sys

import numpy as np
import pytest
import torch

CUDA = torch.cuda.is_available()
_INTERPRETER_READY = True
if not CUDA:
    if os.environ.get("PONDER_TRITON_IMPORTED_INTERPRETED") == "1":
        pass  # tests/conftest.py imported Triton with the interpreter on, before anything else
    elif "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        # Triton was imported for compiling: its interpreter cannot run in this process.
        _INTERPRETER_READY = False
    else:
        _saved = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            pytest.importorskip("triton")
        finally:
            if _saved is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = _saved
else:
    pytest.importorskip("triton")


@pytest.fixture(autouse=True)
def _triton_interpreter(request, monkeypatch):
    if CUDA or "gpu" in request.keywords:
        return
    if not _INTERPRETER_READY:
        pytest.skip("Triton was imported before TRITON_INTERPRET=1 was set; run tests/triton in a fresh process")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def device() -> str:
    """Where the kernels under test run: the GPU when there is one, else the CPU interpreter."""
    return "cuda" if CUDA else "cpu"


def grow_forest(rng: np.random.Generator, page_size: int, num_roots: int, max_nodes: int, max_step: int):
    """Leaves of a random search forest with page tables grown like ponder.PageTable: a child
    shares its parent's pages and its first token into a shared partial page copies that page.

    Returns (block_tables [B, max_pages] int32 padded with -1, seq_lens [B] int32, pages used).
    Roots start with a prompt of 1..3*page_size tokens so trees share a real prefix.
    """
    S = page_size
    nodes, fresh = [], 0
    for _ in range(num_roots):
        n = int(rng.integers(1, 3 * S + 1))
        pages = list(range(fresh, fresh + -(-n // S)))
        fresh += len(pages)
        nodes.append((pages, n))
    leaves, i = [], 0
    while i < len(nodes):
        pages, length = nodes[i]
        kids = int(rng.integers(0, 4)) if len(nodes) < max_nodes else 0
        if i < num_roots and kids == 0:
            kids = 1
        if kids == 0:
            leaves.append(nodes[i])
        for _ in range(kids):
            child, n = list(pages), length
            for t in range(int(rng.integers(1, max_step + 1))):
                if n % S == 0:
                    child.append(fresh)
                    fresh += 1
                elif t == 0:
                    child[-1] = fresh
                    fresh += 1
                n += 1
            nodes.append((child, n))
        i += 1
    rng.shuffle(leaves)
    width = max(len(p) for p, _ in leaves)
    tables = np.full((len(leaves), width), -1, dtype=np.int32)
    for b, (p, _) in enumerate(leaves):
        tables[b, : len(p)] = p
    return tables, np.array([n for _, n in leaves], dtype=np.int32), fresh


@pytest.fixture
def forest():
    """``grow_forest`` for tests (conftest modules are not importable by name)."""
    return grow_forest
