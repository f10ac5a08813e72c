"""Attention over the paged KV cache: ``paged_attention`` (decode and prefill, ragged batches) and
``shared_prefix_attention`` (decode through an attention plan, each shared tree segment read once)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ponder.ops import _checks, reference
from ponder.attention_plan import DeviceAttentionPlan, plan_attention
from ponder.ops._registry import direct_call, implementation, register, register_host, resolve_backend
from ponder.ops._threads import native_threads

try:
    from ponder import _core
except ImportError:  # the pure-Python parts still work without the extension
    _core = None

_INT32 = (torch.int32,)


def _check_paged_attention(q, kv_cache, layer, block_tables, seq_lens, query_indptr, scale, check) -> None:
    _checks.kv_cache(kv_cache, layer)
    _, _, P, S, Hk, D = kv_cache.shape
    _checks.tensor("q", q, 3, _checks.FLOAT_DTYPES, "[T, H, D] float")
    _checks.dim_size("q", q, 2, D, "D, the kv_cache's head dim")
    H = q.shape[1]
    if H % Hk != 0:
        raise ValueError(f"q has {H} heads, which is not a multiple of the kv_cache's {Hk} KV heads")
    _checks.tensor("block_tables", block_tables, 2, _INT32, "[B, max_pages] int32")
    _checks.tensor("seq_lens", seq_lens, 1, _INT32, "[B] int32")
    _checks.tensor("query_indptr", query_indptr, 1, _INT32, "[B+1] int32")
    B = seq_lens.shape[0]
    _checks.dim_size("block_tables", block_tables, 0, B, "B, the length of seq_lens")
    _checks.dim_size("query_indptr", query_indptr, 0, B + 1, "B + 1, one more than the length of seq_lens")
    _checks.same_device("q", q, kv_cache=kv_cache, block_tables=block_tables, seq_lens=seq_lens, query_indptr=query_indptr)
    if isinstance(scale, bool) or not isinstance(scale, (float, int)):
        raise TypeError(f"scale must be a float, got {type(scale).__name__} {scale!r}")
    if not _checks.value_checks(check, q.device) or B == 0:
        return
    T = q.shape[0]
    indptr = _checks.host_array(query_indptr).astype(np.int64)
    num_q = np.diff(indptr)
    if indptr[0] != 0 or indptr[-1] != T or (num_q < 0).any():
        raise ValueError(f"query_indptr must be non-decreasing from 0 to T = {T} (q's rows), got {indptr.tolist()}")
    lens = _checks.host_array(seq_lens).astype(np.int64)
    capacity = block_tables.shape[1] * S
    short = np.flatnonzero((lens < num_q) | (lens > capacity))
    if short.size:
        b = int(short[0])
        raise ValueError(
            f"seq_lens[{b}] = {lens[b]} must lie in [{num_q[b]}, {capacity}]: at least the sequence's "
            f"query rows (already appended) and at most max_pages * S = {block_tables.shape[1]} * {S}"
        )
    tables = _checks.host_array(block_tables)
    used = np.arange(tables.shape[1])[None, :] < ((lens + S - 1) // S)[:, None]
    bad = np.argwhere(used & ((tables < 0) | (tables >= P)))
    if bad.size:
        b, i = (int(x) for x in bad[0])
        raise IndexError(f"block_tables[{b}, {i}] = {tables[b, i]} must be a page id in [0, {P})")


@torch.library.custom_op("ponder::paged_attention", mutates_args=())
def _paged_attention_op(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    layer: int,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_indptr: torch.Tensor,
    scale: float,
    backend: str,
) -> torch.Tensor:
    impl = implementation("paged_attention", backend, q.device)
    return impl(q, kv_cache, layer, block_tables, seq_lens, query_indptr, scale)


@_paged_attention_op.register_fake
def _(q, kv_cache, layer, block_tables, seq_lens, query_indptr, scale, backend):
    return torch.empty_like(q)


register("paged_attention", "torch")(reference.paged_attention)

# Above this many (query row, key) pairs per query head a prefill goes to the reference, whose
# SDPA runs blocked matrix products; the native kernel's per-row dot products win below it
# (decode rows, short prefills: measured in benchmarks/bench_attention.py --native).
NATIVE_MAX_PREFILL_PAIRS = 1 << 14
# Cache dtypes the native CPU kernels read, and their ``KVType`` codes (csrc/attention_cpu.h).
_HOST_KV_TYPES = {torch.float32: 0, torch.bfloat16: 1}


def _paged_attention_host(q, kv_cache, layer, block_tables, seq_lens, query_indptr, scale) -> torch.Tensor:
    """``ponder._core.paged_attention_cpu`` for CPU caches in fp32 or bf16 (bf16 K / V widened on
    load, queries computed in fp32): reads K and V from their pages in place. Other dtypes, and
    prefills with more than ``NATIVE_MAX_PREFILL_PAIRS`` (row, key) pairs, run the reference.
    Same result as the reference up to fp32 summation order."""
    T, H, D = q.shape
    B = seq_lens.shape[0]
    kv_type = _HOST_KV_TYPES.get(kv_cache.dtype)
    if kv_type is None or q.dtype not in _HOST_KV_TYPES or not kv_cache.is_contiguous():
        return reference.paged_attention(q, kv_cache, layer, block_tables, seq_lens, query_indptr, scale)
    if T != B:  # not a pure decode batch: count the causal (row, key) pairs
        lens = seq_lens.to(torch.int64)
        num_q = (query_indptr[1:] - query_indptr[:-1]).to(torch.int64)
        pairs = int((num_q * (lens - num_q) + num_q * (num_q + 1) // 2).sum())
        if pairs > NATIVE_MAX_PREFILL_PAIRS:
            return reference.paged_attention(q, kv_cache, layer, block_tables, seq_lens, query_indptr, scale)
    _, _, P, S, Hk, _ = kv_cache.shape
    qc = q.float().contiguous()  # a no-op for contiguous fp32 rows
    tables, lens_c, indptr = (t.contiguous() for t in (block_tables, seq_lens, query_indptr))
    out = torch.empty_like(qc)
    plane = kv_cache[layer]
    _core.paged_attention_cpu(qc.data_ptr(), T, H, D, plane[0].data_ptr(), plane[1].data_ptr(), kv_type, Hk, S,
                              tables.data_ptr(), B, tables.shape[1], lens_c.data_ptr(), indptr.data_ptr(), P,
                              float(scale), out.data_ptr(), native_threads())
    return out if q.dtype == torch.float32 else out.to(q.dtype)


if _core is not None and hasattr(_core, "paged_attention_cpu"):
    register_host("paged_attention")(_paged_attention_host)


def paged_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    layer: int,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_indptr: torch.Tensor,
    scale: float,
    backend: str = "auto",
    *,
    check: Optional[bool] = None,
) -> torch.Tensor:
    """Causal softmax attention of a ragged batch of query rows over the paged KV cache.

    q: ``[T, H, D]`` float32 / bfloat16 / float16; rows of B sequences, flattened.
    kv_cache: ``[L, 2, P, S, Hk, D]``, any float dtype; H must be a multiple of Hk.
    layer: the layer whose K/V planes are read, in ``[0, L)``.
    block_tables: ``[B, max_pages]`` int32; page ids of each sequence in order. Entries past
    ``ceil(seq_lens[b] / S)`` are ignored (padding, any value).
    seq_lens: ``[B]`` int32; tokens in sequence b's KV, *including* its own query rows (call
    ``append_kv`` first).
    query_indptr: ``[B+1]`` int32; rows ``query_indptr[b] .. query_indptr[b+1]-1`` belong to
    sequence b, n_b = ``query_indptr[b+1] - query_indptr[b]``.
    scale: multiplies ``q . k`` before the softmax (usually ``D ** -0.5``).
    check: validate index values (device syncs). Default: on CPU tensors only.

    Returns ``[T, H, D]`` in q's dtype. Row j of sequence b sits at position
    ``seq_lens[b] - n_b + j`` and attends to KV positions ``0 ..`` that position. Query head h
    reads KV head ``h // (H // Hk)`` (GQA). Scores and softmax are computed in fp32. n_b = 1 for
    all b is decode; larger n_b is prefill, possibly on top of cached pages.

    Implementations: ``backend="torch"`` is ``reference.paged_attention`` (gathers each
    sequence's pages, then SDPA). ``"auto"`` on fp32 / bf16 CPU tensors runs the native kernel of
    ``ponder._core`` (reads K/V in place, checks every index first) for decode batches and for
    prefills of at most ``NATIVE_MAX_PREFILL_PAIRS`` causal (row, key) pairs; the result equals
    the reference up to fp32 summation order.

    Example (S=4, two sequences sharing page 0 after a fork)::

        block_tables = [[0, 3],      seq_lens = [6, 5]      query_indptr = [0, 1, 3]
                        [0, 5]]
        row 0: sequence 0 position 5, reads page 0 offsets 0-3 and page 3 offsets 0-1
        rows 1, 2: sequence 1 positions 3 and 4 (prefill of 2 tokens on a cached prefix)
    """
    _check_paged_attention(q, kv_cache, layer, block_tables, seq_lens, query_indptr, scale, check)
    if q.shape[0] == 0:
        return torch.empty_like(q)
    args = (q, kv_cache, layer, block_tables, seq_lens, query_indptr, float(scale))
    if direct_call(q, kv_cache, block_tables, seq_lens, query_indptr):
        return implementation("paged_attention", backend, q.device)(*args)
    return _paged_attention_op(*args, backend)


# ---- shared_prefix_attention ----------------------------------------------------------------------
_PLAN_ARRAYS = ("item_page_indptr", "item_pages", "item_num_tokens", "item_query_indptr", "item_queries",
                "merge_indptr", "merge_slots")  # fmt: skip


def _check_csr(name: str, indptr: np.ndarray, total: int, what: str) -> np.ndarray:
    counts = np.diff(indptr)
    if indptr.size == 0 or indptr[0] != 0 or indptr[-1] != total or (counts < 1).any():
        raise ValueError(f"plan.{name} must rise strictly from 0 to {total} ({what}), got {indptr.tolist()}")
    return counts


def _check_shared_prefix_attention(q, kv_cache, layer, plan, scale, check) -> None:
    _checks.kv_cache(kv_cache, layer)
    _, _, P, S, Hk, D = kv_cache.shape
    _checks.tensor("q", q, 3, _checks.FLOAT_DTYPES, "[B, H, D] float")
    _checks.dim_size("q", q, 2, D, "D, the kv_cache's head dim")
    B, H = q.shape[:2]
    if H % Hk != 0:
        raise ValueError(f"q has {H} heads, which is not a multiple of the kv_cache's {Hk} KV heads")
    if not all(isinstance(getattr(plan, n, None), torch.Tensor) for n in _PLAN_ARRAYS):
        raise TypeError(
            f"plan must be a ponder.attention_plan.DeviceAttentionPlan (plan_attention(...).to(device), built once "
            f"per decode step), got {type(plan).__name__}"
        )
    for n in _PLAN_ARRAYS:
        _checks.tensor(f"plan.{n}", getattr(plan, n), 1, _INT32, "1-D int32")
    _checks.same_device("q", q, kv_cache=kv_cache, **{f"plan.{n}": getattr(plan, n) for n in _PLAN_ARRAYS})
    if plan.num_queries != B:
        raise ValueError(f"q has {B} rows but the plan has {plan.num_queries} queries (one decode row per branch)")
    if plan.page_size != S:
        raise ValueError(f"the plan was built for page size {plan.page_size} but the kv_cache has S = {S}")
    _checks.dim_size("plan.merge_indptr", plan.merge_indptr, 0, B + 1, "B + 1, one more than q's rows")
    if isinstance(scale, bool) or not isinstance(scale, (float, int)):
        raise TypeError(f"scale must be a float, got {type(scale).__name__} {scale!r}")
    if not _checks.value_checks(check, q.device) or B == 0:
        return
    a = {n: _checks.host_array(getattr(plan, n)).astype(np.int64) for n in _PLAN_ARRAYS}
    num_items = a["item_num_tokens"].shape[0]
    num_pages = _check_csr("item_page_indptr", a["item_page_indptr"], a["item_pages"].shape[0], "pages of each item")
    num_q = _check_csr("item_query_indptr", a["item_query_indptr"], a["item_queries"].shape[0], "queries of each item")
    _check_csr("merge_indptr", a["merge_indptr"], a["merge_slots"].shape[0], "slots of each query")
    if num_pages.shape[0] != num_items or num_q.shape[0] != num_items:
        raise ValueError(f"plan.item_page_indptr and plan.item_query_indptr must have {num_items + 1} entries")
    tokens = a["item_num_tokens"]
    bad = np.flatnonzero((tokens <= (num_pages - 1) * S) | (tokens > num_pages * S))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"plan.item_num_tokens[{i}] = {tokens[i]} does not fit its {num_pages[i]} pages of S = {S}")
    pages, queries = a["item_pages"], a["item_queries"]
    if pages.size and (pages.min() < 0 or pages.max() >= P):
        raise IndexError(f"plan.item_pages must be page ids in [0, {P}), got values in [{pages.min()}, {pages.max()}]")
    if queries.min() < 0 or queries.max() >= B:
        raise IndexError(
            f"plan.item_queries must be rows of q in [0, {B}), got values in [{queries.min()}, {queries.max()}]"
        )
    # The merge lists must be exactly the slots of each query (the kernels read them, the
    # reference reads item_queries).
    slots = a["merge_slots"]
    owner = np.repeat(np.arange(B), np.diff(a["merge_indptr"]))
    if slots.min() < 0 or slots.max() >= queries.shape[0] or not np.array_equal(queries[slots], owner):
        raise ValueError("plan.merge_slots must list, for each query b, the slots s with item_queries[s] == b")
    if np.bincount(slots, minlength=queries.shape[0]).max() != 1:
        raise ValueError("plan.merge_slots must name every slot exactly once")


def _device_plan(q, kv_cache, arrays, num_shared_items, max_item_queries) -> DeviceAttentionPlan:
    """The plan view the implementations take, rebuilt from the op's flat arguments."""
    return DeviceAttentionPlan(
        *arrays, num_queries=q.shape[0], num_items=arrays[2].shape[0], num_shared_items=num_shared_items,
        max_item_queries=max_item_queries, page_size=kv_cache.shape[3],
    )  # fmt: skip


@torch.library.custom_op("ponder::shared_prefix_attention", mutates_args=())
def _shared_prefix_attention_op(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    layer: int,
    item_page_indptr: torch.Tensor,
    item_pages: torch.Tensor,
    item_num_tokens: torch.Tensor,
    item_query_indptr: torch.Tensor,
    item_queries: torch.Tensor,
    merge_indptr: torch.Tensor,
    merge_slots: torch.Tensor,
    num_shared_items: int,
    max_item_queries: int,
    scale: float,
    backend: str,
) -> torch.Tensor:
    arrays = (item_page_indptr, item_pages, item_num_tokens, item_query_indptr, item_queries, merge_indptr, merge_slots)
    plan = _device_plan(q, kv_cache, arrays, num_shared_items, max_item_queries)
    return implementation("shared_prefix_attention", backend, q.device)(q, kv_cache, layer, plan, scale)


@_shared_prefix_attention_op.register_fake
def _(q, kv_cache, layer, item_page_indptr, item_pages, item_num_tokens, item_query_indptr, item_queries,
      merge_indptr, merge_slots, num_shared_items, max_item_queries, scale, backend):  # fmt: skip
    return torch.empty_like(q)


register("shared_prefix_attention", "torch")(reference.shared_prefix_attention)

def _shared_prefix_attention_native(q, kv_cache, layer, plan, scale) -> torch.Tensor:
    """``ponder._core.shared_prefix_attention_cpu`` on a contiguous fp32 / bf16 CPU cache: each
    plan item's pages are read in place, once for all of its rows, with an online softmax (fp32;
    bf16 K / V widened on load). The plan's index values are checked by the kernel before any
    read. Same result as the reference up to fp32 rounding order. Large calls split the branches
    over ``ops._threads.native_threads()`` threads (the same bits at any thread count)."""
    kv_type = _HOST_KV_TYPES.get(kv_cache.dtype)
    if kv_type is None or not kv_cache.is_contiguous():
        raise ValueError(f"the native kernel reads contiguous float32 / bfloat16 caches, got {kv_cache.dtype}")
    B, H, D = q.shape
    _, _, P, S, Hk, _ = kv_cache.shape
    qf = q.float().contiguous()  # a no-op for fp32 rows
    a = [t.contiguous() for t in (plan.item_page_indptr, plan.item_pages, plan.item_num_tokens,
                                  plan.item_query_indptr, plan.item_queries)]  # fmt: skip
    num_items = a[2].shape[0]
    if a[0].shape[0] != num_items + 1 or a[3].shape[0] != num_items + 1:
        raise ValueError(f"plan.item_page_indptr and plan.item_query_indptr must have {num_items + 1} entries "
                         f"(one more than plan.item_num_tokens), got {a[0].shape[0]} and {a[3].shape[0]}")
    out = torch.empty(B, H, D, dtype=torch.float32)
    plane = kv_cache[layer]
    _core.shared_prefix_attention_cpu(qf.data_ptr(), B, H, D, plane[0].data_ptr(), plane[1].data_ptr(), kv_type, Hk,
                                      S, P, a[0].data_ptr(), a[1].data_ptr(), a[2].data_ptr(), num_items,
                                      a[1].shape[0], a[3].data_ptr(), a[4].data_ptr(), a[4].shape[0], float(scale),
                                      out.data_ptr(), native_threads())
    return out if q.dtype == torch.float32 else out.to(q.dtype)


def _shared_prefix_attention_host(q, kv_cache, layer, plan, scale) -> torch.Tensor:
    """The CPU host implementation: the native kernel for contiguous fp32 / bf16 caches, else the
    reference. (In a decode step the native kernel beat the reference's matrix products at every
    item size measured, SmolLM2 at 1 and 2 threads: 16-64 branches under 512-2,048 tokens.)"""
    if kv_cache.dtype not in _HOST_KV_TYPES or not kv_cache.is_contiguous():
        return reference.shared_prefix_attention(q, kv_cache, layer, plan, scale)
    return _shared_prefix_attention_native(q, kv_cache, layer, plan, scale)


if _core is not None and hasattr(_core, "shared_prefix_attention_cpu"):
    register_host("shared_prefix_attention")(_shared_prefix_attention_host)


def plan_shared_prefix_attention(
    block_tables, seq_lens, kv_cache: torch.Tensor, num_heads: int, backend: str = "auto"
) -> DeviceAttentionPlan:
    """The attention plan of one decode step, on the KV cache's device, in one call.

    block_tables: ``[B, max_pages]`` integer page ids and seq_lens: ``[B]`` tokens per branch
    *including* its decode token, as ``PageTable.batch_tables`` returns them (numpy or torch;
    device tensors are copied to the host once). kv_cache: ``[L, 2, P, S, Hk, D]``, for S, P and
    the device. num_heads: H, the query heads (G = H // Hk sets the Triton tile).

    Items are shaped for the backend that ``backend`` resolves to on the cache's device: the
    Triton and CUDA kernels get items of about 1024 tokens and at most 64 query-head rows
    (``triton_backend.plan_options``, ``cuda_backend.plan_options``); the PyTorch reference gets whole segments, so a prefix is
    read once for all branches under it. Build it once per decode step, pass it to
    ``shared_prefix_attention`` in every layer.
    """
    _, _, P, S, _, _ = kv_cache.shape
    options = plan_item_options(kv_cache, num_heads, backend)
    return plan_attention(block_tables, seq_lens, S, num_pages=P, **options).to(kv_cache.device)


def plan_item_options(kv_cache: torch.Tensor, num_heads: int, backend: str = "auto") -> dict:
    """``max_pages_per_item`` / ``max_queries_per_item`` for plans run by the backend that
    ``backend`` resolves to on the cache's device (see ``plan_shared_prefix_attention``)."""
    from ponder.ops import triton_backend

    _checks.kv_cache(kv_cache, 0)
    _, _, _, S, Hk, _ = kv_cache.shape
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 or num_heads % Hk:
        raise ValueError(f"num_heads must be a positive multiple of the kv_cache's {Hk} KV heads, got {num_heads!r}")
    chosen = resolve_backend(backend, kv_cache.device, "shared_prefix_attention")
    if chosen == "triton":
        return triton_backend.plan_options(S, num_heads // Hk)
    if chosen == "cuda":
        from ponder.ops import cuda_backend

        return cuda_backend.plan_options(S, num_heads // Hk)
    return {"max_pages_per_item": 0, "max_queries_per_item": 0}


def shared_prefix_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    layer: int,
    plan: DeviceAttentionPlan,
    scale: float,
    backend: str = "auto",
    *,
    check: Optional[bool] = None,
) -> torch.Tensor:
    """Decode attention of B branches that reads each shared segment of their tree once.

    q: ``[B, H, D]`` float32 / bfloat16 / float16; row b is branch b's decode query (the plan's
    query b). kv_cache: ``[L, 2, P, S, Hk, D]``, any float dtype; H a multiple of Hk.
    layer: the layer whose K/V planes are read, in ``[0, L)``.
    plan: a ``ponder.attention_plan.DeviceAttentionPlan`` on q's device, from
    ``plan_shared_prefix_attention`` (or ``plan_attention(...).to(device)``): built once per
    decode step from the block tables, reused in every layer.
    scale: multiplies ``q . k`` before the softmax (usually ``D ** -0.5``).
    check: validate the plan's values (device syncs). Default: on CPU tensors only.

    Returns ``[B, H, D]`` in q's dtype, equal to ``paged_attention`` with one query row per
    branch: branch b attends to all ``seq_lens[b]`` tokens of its KV (its decode token appended
    already). Each plan item -- a run of pages shared by a set of branches -- is attended by all
    of its branches' rows at once, giving partial outputs with their log-sum-exp, which are
    merged per branch. Scores, softmax and merge are fp32.

    Implementations: ``backend="torch"`` is ``reference.shared_prefix_attention`` (one batched
    matrix product per item shape). ``"auto"`` on a CPU fp32 or bf16 cache runs the native kernel
    of ``ponder._core`` (reads each item's pages in place with an online softmax, checks every
    plan index first; large calls split the branches over ``ops._threads.native_threads()`` threads);
    the result equals the reference up to fp32 rounding order and does not depend on the thread
    count. On a GPU, ``"auto"`` runs the Triton kernel (``"triton"``, measured faster than the CUDA
    kernel at 128-dim heads) and the CUDA kernel without Triton; ``"cuda"`` runs
    ``cuda_backend.shared_prefix_attention`` (tensor-core products for bf16 / fp16 caches, head
    dims up to 256). Both round q and the softmax weights to the cache's 16-bit dtype before their
    products.

    Example (S=4; branches 0 and 1 forked from a 6-token prompt, pages 0-1)::

        block_tables = [[0, 1, 2],     seq_lens = [10, 9]
                        [0, 3, 4]]
        item 0: page [0], tokens 0-3, branches {0, 1}   <- the full prompt page, read once
        item 1: pages [1, 2], tokens 4-9, branch 0       (page 3 is branch 1's copy of page 1)
        item 2: pages [3, 4], tokens 4-8, branch 1
        out[b] = merge of branch b's partials weighted by exp(lse - max lse)
    """
    _check_shared_prefix_attention(q, kv_cache, layer, plan, scale, check)
    if q.shape[0] == 0:
        return torch.empty_like(q)
    arrays = tuple(getattr(plan, n) for n in _PLAN_ARRAYS)
    if direct_call(q, kv_cache, *arrays):
        return implementation("shared_prefix_attention", backend, q.device)(q, kv_cache, layer, plan, float(scale))
    return _shared_prefix_attention_op(
        q, kv_cache, layer, *arrays, int(plan.num_shared_items), int(plan.max_item_queries), float(scale), backend
    )
