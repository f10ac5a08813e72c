"""Shared-prefix attention plan: read each KV segment of a search tree once per decode step.

Branches of a search tree share the KV pages of their common ancestors. ``plan_attention`` looks
at a decode batch's block tables and finds the tree segments -- maximal runs of pages shared by
the same set of branches: a prefix shared by all, sub-prefixes shared by sibling groups, each
branch's own tail -- and emits work items ``(segment pages, query rows)`` plus, per query, the
partial outputs to merge. The op ``ponder.ops.shared_prefix_attention`` reads each item's pages
once for all of its rows and merges the partials by log-sum-exp. Build the plan once per decode
step (``ponder.ops.plan_shared_prefix_attention`` does it from block tables in one call) and reuse
it for every layer.

Example (S = 4; rows are branches, -1 is padding)::

    block_tables = [[0, 1, 2, -1],     seq_lens = [10, 14, 7]
                    [0, 1, 3,  4],
                    [0, 5, -1, -1]]

    item 0: pages [0]     tokens [0, 4)    queries [0, 1, 2]   slots 0, 1, 2
    item 1: pages [1]     tokens [4, 8)    queries [0, 1]      slots 3, 4
    item 2: pages [2]     tokens [8, 10)   queries [0]         slot 5
    item 3: pages [3, 4]  tokens [8, 14)   queries [1]         slot 6
    item 4: pages [5]     tokens [4, 7)    queries [2]         slot 7
    merge: query 0 <- slots [0, 3, 5], query 1 <- [1, 4, 6], query 2 <- [2, 7]

Segments are found as a trie over the block-table rows, which for page tables built by forking
(where sharing a page implies sharing every page before it) is exactly the set of maximal shared
runs. A partial last page is only ever in a segment of branches that hold it with the same
number of valid tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np
import torch

__all__ = ["AttentionPlan", "DeviceAttentionPlan", "kernel_item_options", "plan_attention"]

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_ARRAYS = (
    "item_page_indptr", "item_pages", "item_token_start", "item_num_tokens", "item_segment",
    "item_query_indptr", "item_queries", "merge_indptr", "merge_slots",
)  # fmt: skip


class DeviceAttentionPlan(NamedTuple):
    """A plan's kernel inputs as int32 tensors on one device (see ``AttentionPlan.to``)."""

    item_page_indptr: torch.Tensor  # [I+1]
    item_pages: torch.Tensor  # [item_page_indptr[I]]
    item_num_tokens: torch.Tensor  # [I]
    item_query_indptr: torch.Tensor  # [I+1]
    item_queries: torch.Tensor  # [num_slots]
    merge_indptr: torch.Tensor  # [B+1]
    merge_slots: torch.Tensor  # [num_slots]
    num_queries: int
    num_items: int
    num_shared_items: int
    max_item_queries: int
    page_size: int


@dataclass(frozen=True, eq=False)
class AttentionPlan:
    """Work items of one decode step; all arrays are int32 numpy arrays (CSR, ``I`` items).

    Item i covers tokens ``[item_token_start[i], item_token_start[i] + item_num_tokens[i])`` of
    each of its branches, held in pages ``item_pages[item_page_indptr[i]:item_page_indptr[i+1]]``
    (only the last may be partial). Its branches are
    ``item_queries[item_query_indptr[i]:item_query_indptr[i+1]]``; the partial output of its j-th
    branch goes to slot ``item_query_indptr[i] + j``. Branch b's output merges the slots
    ``merge_slots[merge_indptr[b]:merge_indptr[b+1]]``. Items ``[0, num_shared_items)`` have at
    least two branches, the rest exactly one; ``item_segment`` names each item's tree segment.
    """

    num_queries: int
    num_segments: int
    num_shared_items: int
    max_item_queries: int
    page_size: int
    item_page_indptr: np.ndarray
    item_pages: np.ndarray
    item_token_start: np.ndarray
    item_num_tokens: np.ndarray
    item_segment: np.ndarray
    item_query_indptr: np.ndarray
    item_queries: np.ndarray
    merge_indptr: np.ndarray
    merge_slots: np.ndarray

    @classmethod
    def from_native(cls, raw: dict, page_size: int) -> "AttentionPlan":
        """The plan from the dict ``ponder._core`` builds (``attention_plan``, ``PageTable.decode_step``)."""
        return cls(num_queries=raw["num_queries"], num_segments=raw["num_segments"],
                   num_shared_items=raw["num_shared_items"], max_item_queries=raw["max_item_queries"],
                   page_size=page_size, **{n: raw[n] for n in _ARRAYS})

    @property
    def num_items(self) -> int:
        return int(self.item_num_tokens.shape[0])

    @property
    def num_slots(self) -> int:
        return int(self.item_queries.shape[0])

    def item_tokens_by_query(self) -> np.ndarray:
        """``[B, depth]`` int32: query b's items' token counts in item order (the order the
        kernels merge them in), ``-1`` past its last item. Two queries over the same keys and
        values with equal rows here go through the same arithmetic."""
        counts = np.diff(self.item_query_indptr)
        item_of_slot = np.repeat(np.arange(self.num_items), counts)
        order = np.argsort(self.item_queries, kind="stable")  # each query's slots, in item order
        q = self.item_queries[order].astype(np.int64)
        per_q = np.bincount(q, minlength=self.num_queries)
        out = np.full((self.num_queries, int(per_q.max()) if per_q.size else 0), -1, dtype=np.int32)
        first_slot = np.cumsum(per_q) - per_q
        out[q, np.arange(q.size) - first_slot[q]] = self.item_num_tokens[item_of_slot[order]]
        return out

    def for_queries(self, queries: np.ndarray) -> "AttentionPlan":
        """The plan of ``queries`` (distinct query indices) alone, renumbered ``0..len-1`` in
        their order: every item keeps its pages, tokens and place in the order, and each kept
        query keeps its slots in item order, so the kernels give it the same bits; items left
        with no query go. Items ``[0, num_shared_items)`` then hold every item of two or more
        queries (some may be down to one), the rest exactly one."""
        queries = np.asarray(queries, dtype=np.int64)
        renum = np.full(self.num_queries, -1, dtype=np.int64)
        renum[queries] = np.arange(queries.size)
        counts = np.diff(self.item_query_indptr)
        item_of_slot = np.repeat(np.arange(self.num_items), counts)
        keep = renum[self.item_queries] >= 0
        new_counts = np.bincount(item_of_slot[keep], minlength=self.num_items)
        kept = new_counts > 0
        pages_per_item = np.diff(self.item_page_indptr)
        page_item = np.repeat(np.arange(self.num_items), pages_per_item)
        item_queries = renum[self.item_queries[keep]].astype(np.int32)
        multi = np.flatnonzero(new_counts[kept] >= 2)

        def indptr(sizes):
            out = np.zeros(sizes.size + 1, dtype=np.int32)
            np.cumsum(sizes, out=out[1:])
            return out

        return AttentionPlan(
            num_queries=int(queries.size), num_segments=self.num_segments,
            num_shared_items=int(multi[-1]) + 1 if multi.size else 0,
            max_item_queries=int(new_counts.max()) if new_counts.size else 0, page_size=self.page_size,
            item_page_indptr=indptr(pages_per_item[kept]), item_pages=self.item_pages[kept[page_item]],
            item_token_start=self.item_token_start[kept], item_num_tokens=self.item_num_tokens[kept],
            item_segment=self.item_segment[kept], item_query_indptr=indptr(new_counts[kept]),
            item_queries=item_queries,
            merge_indptr=indptr(np.bincount(item_queries, minlength=queries.size)),
            merge_slots=np.argsort(item_queries, kind="stable").astype(np.int32),
        )  # fmt: skip

    def pages_read(self) -> int:
        """KV pages the plan reads per KV head (each item's pages once)."""
        return int(self.item_pages.shape[0])

    def to(self, device) -> DeviceAttentionPlan:
        """The kernel inputs on ``device`` in one host-to-device copy."""
        names = ("item_page_indptr", "item_pages", "item_num_tokens", "item_query_indptr", "item_queries",
                 "merge_indptr", "merge_slots")  # fmt: skip
        parts = [getattr(self, n) for n in names]
        flat = torch.from_numpy(np.concatenate(parts)).to(device)
        views, offset = [], 0
        for p in parts:
            views.append(flat[offset : offset + p.shape[0]])
            offset += p.shape[0]
        return DeviceAttentionPlan(
            *views, num_queries=self.num_queries, num_items=self.num_items, num_shared_items=self.num_shared_items,
            max_item_queries=self.max_item_queries, page_size=self.page_size,
        )  # fmt: skip


def kernel_item_options(page_size: int, group_size: int, *, tokens_per_item: int = 1024,
                        rows_per_item: int = 64) -> dict:
    """``plan_attention`` keyword arguments for a GPU kernel that attends one item per program:
    items of about ``tokens_per_item`` KV tokens (a long prefix spreads over many programs) and
    at most ``rows_per_item`` query-head rows (``max_queries_per_item * group_size``, at least one
    query) per item."""
    return {
        "max_pages_per_item": max(1, tokens_per_item // page_size),
        "max_queries_per_item": max(1, rows_per_item // group_size),
    }


def _int32_array(name: str, value, ndim: int, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):  # possibly on a GPU: one copy to the host
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be a {what} integer array, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be a {what} integer array, got dtype {arr.dtype}")
    if arr.dtype != np.int32 and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < _INT32_MIN or hi > _INT32_MAX:
            raise ValueError(f"{name} values must fit in int32, got values in [{lo}, {hi}]")
    return np.ascontiguousarray(arr, dtype=np.int32)


def _count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def plan_attention(
    block_tables,
    seq_lens,
    page_size: int,
    *,
    num_pages: Optional[int] = None,
    max_pages_per_item: int = 0,
    max_queries_per_item: int = 0,
) -> AttentionPlan:
    """Plan shared-prefix decode attention for B branches (one query row each).

    block_tables: ``[B, max_pages]`` integer page ids (numpy, torch or nested sequences; a GPU
    tensor is copied to the host). Columns past ``ceil(seq_lens[b] / page_size)`` are padding.
    seq_lens: ``[B]`` tokens in each branch's KV including its decode token, in
    ``[1, max_pages * page_size]``.
    page_size: tokens per page, S.
    num_pages: the pool size P; page ids are checked against it when given.
    max_pages_per_item: split segments into items of at most this many pages (0 = no split), so a
    long shared prefix spreads over many programs.
    max_queries_per_item: at most this many branches per item (0 = no limit), bounding the kernel
    tile at ``max_queries_per_item * G`` rows.

    Raises ValueError / TypeError for malformed arrays and IndexError for a page id outside the
    pool (or -1 inside a branch's used pages).
    """
    from ponder import _core

    page_size = _count("page_size", page_size, 1)
    tables = _int32_array("block_tables", block_tables, 2, "[B, max_pages]")
    lens = _int32_array("seq_lens", seq_lens, 1, "[B]")
    pool = 0 if num_pages is None else _count("num_pages", num_pages, 1)
    raw = _core.attention_plan(
        tables, lens, page_size, pool,
        _count("max_pages_per_item", max_pages_per_item, 0), _count("max_queries_per_item", max_queries_per_item, 0),
    )  # fmt: skip
    return AttentionPlan.from_native(raw, page_size)
