"""Every CUDA kernel of ponder on small inputs, checked against the PyTorch references: the program
that ``compute-sanitizer`` runs (memcheck, racecheck, synccheck) on a GPU machine.

    compute-sanitizer --tool memcheck --error-exitcode 1 python tests/cuda_sanitize.py

Exits 0 when every result matches; any mismatch raises. Sizes are small (the sanitizer slows
kernels down by orders of magnitude) but cover each code path: fp32 (FMA loops) and bf16 / fp16
(tensor cores), head dims that are and are not whole 16-byte loads, items with more rows than
one block holds, a partial last page, copy-on-write page copies, and value scoring with and
without the norm.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

import ponder.ops as ops
from ponder import PageTable, _core
from ponder.attention_plan import plan_attention
from ponder.ops import cuda_backend, reference


def _tree(seed: int, S: int, branches: int, prompt: int):
    """A prompt forked into `branches` children of 1-9 own tokens each (a shared partial page is
    copied on write), as block tables and lengths."""
    rng = np.random.default_rng(seed)
    table = PageTable(num_pages=1024, page_size=S, prefix_cache=False)
    root, _, _ = table.allocate(rng.integers(0, 50, prompt))
    leaves = []
    for _ in range(branches):
        child = table.fork(root)
        table.append([child], [int(rng.integers(1, 10))])
        leaves.append(child)
    tables, lens = table.batch_tables(leaves)
    return tables, lens, int(tables.max()) + 1


def check_attention(dtype, D: int, G: int, branches: int, S: int, prompt: int, **plan_options) -> None:
    Hk = 2
    H = Hk * G
    tables, lens, num_pages = _tree(D + G + branches, S, branches, prompt)
    g = torch.Generator().manual_seed(D)
    kv = torch.randn(2, 2, num_pages, S, Hk, D, generator=g).to(dtype)
    q = torch.randn(len(lens), H, D, generator=g).to(dtype)
    bt, sl = torch.from_numpy(tables), torch.from_numpy(lens)
    indptr = torch.arange(len(lens) + 1, dtype=torch.int32)
    expected = reference.paged_attention(q.float(), kv.float(), 1, bt, sl, indptr, D**-0.5)
    plan = plan_attention(tables, lens, S, num_pages=num_pages, **plan_options).to("cuda")
    out = cuda_backend.shared_prefix_attention(q.cuda(), kv.cuda(), 1, plan, D**-0.5)
    torch.cuda.synchronize()
    tol = 2e-5 if dtype == torch.float32 else 2e-2  # see tests/ops/test_cuda_kernels.py
    torch.testing.assert_close(out.cpu().float(), expected, atol=tol, rtol=tol)
    print(f"shared_prefix_attention {dtype} D={D} G={G} B={branches} S={S} prompt={prompt} {plan_options}: ok")


def check_value_score(dtype, C: int, norm: bool) -> None:
    g = torch.Generator().manual_seed(C)
    hidden = torch.randn(7, C, generator=g).to(dtype)
    weight = (torch.rand(C, generator=g) + 0.5).to(dtype) if norm else None
    args = (torch.tensor([6, 0, 3, 3]), weight, 1e-5, torch.randn(C, generator=g) / C**0.5, 0.1,
            torch.rand(4, generator=g), torch.tensor([1, 2, 3, 4], dtype=torch.int32), "mean")  # fmt: skip
    expected = reference.value_score(hidden, *args)
    cuda = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    got = ops.value_score(hidden.cuda(), *cuda, backend="cuda")
    torch.cuda.synchronize()
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.cpu(), b, atol=1e-3, rtol=1e-3)
    print(f"value_score {dtype} C={C} norm={norm}: ok")


def check_copy_pages() -> None:
    kv = torch.randn(2, 2, 6, 4, 2, 8, device="cuda", dtype=torch.bfloat16)
    src, dst = torch.tensor([0, 3], dtype=torch.int32), torch.tensor([5, 1], dtype=torch.int32)
    expected = kv.clone()
    expected[:, :, dst.long()] = kv[:, :, src.long()]
    ops.copy_pages(kv, src.cuda(), dst.cuda(), backend="cuda")
    torch.cuda.synchronize()
    assert torch.equal(kv, expected)
    print("copy_pages: ok")


def main() -> int:
    if not torch.cuda.is_available() or not getattr(_core, "CUDA_BUILT", False):
        print("cuda_sanitize: needs a CUDA device and a build with the CUDA kernels")
        return 1
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        check_attention(dtype, 64, 3, 5, 16, 37, **cuda_backend.plan_options(16, 3))
        check_attention(dtype, 40, 4, 20, 4, 70)  # 80 rows: two passes of 64 in one item
    check_attention(torch.bfloat16, 100, 1, 3, 5, 9, max_pages_per_item=1)  # scalar loads, 1-page items
    for dtype in (torch.float32, torch.bfloat16):
        for norm in (False, True):
            check_value_score(dtype, 300, norm)
    check_copy_pages()
    print("cuda_sanitize: all kernels ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
