"""Attention over the paged KV cache: ``paged_attention`` (decode and prefill, ragged batches)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ponder.ops import _checks, reference
from ponder.ops._registry import direct_call, implementation, register

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
