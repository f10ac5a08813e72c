"""Decode attention kernels: ``shared_prefix_attention`` (work items of an attention plan),
``paged_attention`` (per-row split-KV decode), and the log-sum-exp merge of partial outputs.

Both attention kernels run the same inner loop, ``_attend_pages``: a tile of query rows (q
branches x G query heads of one KV head) against a run of KV tokens stored in pages. The
shared-prefix kernel takes its (pages, rows) from an attention plan (``ponder.attention_plan``),
so a prefix shared by many branches is read once for all of them; the per-row kernel derives the
work from the block tables directly (the degenerate plan: one item per query row and KV chunk).

Partial results: ``part_out [num_slots, H, D]`` fp32 (already normalised) and ``part_lse
[num_slots, H]`` fp32, the log-sum-exp of the scaled scores in base 2 (``log2 sum 2^(s*log2e)``),
-inf for an empty item. The merge weights each partial by ``2^(lse - max lse)``.

Layout: ``kv_cache [L, 2, P, S, Hk, D]`` contiguous; the K of token ``off`` of page ``p`` for
head ``h`` starts at element ``k_base + (p * S + off) * Hk * D + h * D`` and its V ``v_plane``
elements later (``k_base`` = start of the layer's K plane, ``v_plane = P * S * Hk * D``).
"""

import triton
import triton.language as tl


@triton.jit
def _attend_pages(
    q_ptr, kv_ptr, pages_ptr, num_tokens, row_t, row_head, row_ok, kvh,
    stride_qt, stride_qh, k_base, v_plane, token_stride, sm_scale_log2,
    PAGE_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, USE_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Online-softmax attention of BLOCK_M query rows over ``num_tokens`` tokens whose pages are
    ``pages_ptr[0..]``. Returns (acc [BLOCK_M, BLOCK_D] fp32 unnormalised, m [BLOCK_M] running max
    of base-2 scores, l [BLOCK_M] sum of 2^(score - m))."""
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q_off = row_t.to(tl.int64) * stride_qt + row_head.to(tl.int64) * stride_qh
    q = tl.load(q_ptr + q_off[:, None] + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    head_off = kvh.to(tl.int64) * HEAD_DIM
    for n0 in range(0, num_tokens, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < num_tokens
        page = tl.load(pages_ptr + n // PAGE_SIZE, mask=n_ok, other=0).to(tl.int64)
        tok = (page * PAGE_SIZE + n % PAGE_SIZE) * token_stride + head_off  # [BLOCK_N] int64
        kv_off = k_base + tok[:, None] + offs_d[None, :]
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(kv_ptr + kv_off, mask=kv_mask, other=0.0)
        v = tl.load(kv_ptr + v_plane + kv_off, mask=kv_mask, other=0.0)
        if USE_DOT:
            s = tl.dot(q.to(k.dtype), tl.trans(k), input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
        else:
            s = tl.sum(q.to(tl.float32)[:, None, :] * k.to(tl.float32)[None, :, :], axis=2)
        s = tl.where(n_ok[None, :], s * sm_scale_log2, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        if USE_DOT:
            pv = tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        else:
            pv = tl.sum(p[:, :, None] * v.to(tl.float32)[None, :, :], axis=1)
        acc = acc * alpha[:, None] + pv
        m = m_new
    return acc, m, l


@triton.jit
def _store_partial(
    part_out_ptr, part_lse_ptr, slot, head, row_ok, acc, m, l, num_heads,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    offs_d = tl.arange(0, BLOCK_D)
    has = l > 0
    lse = tl.where(has, m + tl.log2(tl.where(has, l, 1.0)), float("-inf"))
    out = acc / tl.where(has, l, 1.0)[:, None]
    idx = slot.to(tl.int64) * num_heads + head
    tl.store(part_lse_ptr + idx, lse, mask=row_ok)
    mask = row_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    tl.store(part_out_ptr + idx[:, None] * HEAD_DIM + offs_d[None, :], out, mask=mask)


@triton.jit
def _shared_prefix_attention_kernel(
    q_ptr, kv_ptr, item_page_indptr_ptr, item_pages_ptr, item_num_tokens_ptr, item_query_indptr_ptr,
    item_queries_ptr, part_out_ptr, part_lse_ptr,
    item_offset, num_heads, stride_qt, stride_qh, k_base, v_plane, token_stride, sm_scale_log2,
    GROUP: tl.constexpr, PAGE_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, USE_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (items, Hk): one plan item x one KV head; rows are (item query j, group head g)."""
    item = item_offset + tl.program_id(0)
    kvh = tl.program_id(1)
    page_begin = tl.load(item_page_indptr_ptr + item)
    num_tokens = tl.load(item_num_tokens_ptr + item)
    q_begin = tl.load(item_query_indptr_ptr + item)
    q_end = tl.load(item_query_indptr_ptr + item + 1)
    r = tl.arange(0, BLOCK_M)
    j = r // GROUP
    row_ok = j < q_end - q_begin
    row_t = tl.load(item_queries_ptr + q_begin + j, mask=row_ok, other=0)
    head = kvh * GROUP + r % GROUP
    acc, m, l = _attend_pages(
        q_ptr, kv_ptr, item_pages_ptr + page_begin, num_tokens, row_t, head, row_ok, kvh,
        stride_qt, stride_qh, k_base, v_plane, token_stride, sm_scale_log2,
        PAGE_SIZE, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, USE_DOT, DOT_PRECISION,
    )  # fmt: skip
    _store_partial(part_out_ptr, part_lse_ptr, q_begin + j, head, row_ok, acc, m, l, num_heads, HEAD_DIM, BLOCK_D)


@triton.jit
def _sequence_of_row(query_indptr_ptr, t, num_seqs):
    """The sequence b holding query row t: the largest b with query_indptr[b] <= t."""
    b = tl.minimum(t, num_seqs - 1)
    start = tl.load(query_indptr_ptr + b)
    end = tl.load(query_indptr_ptr + b + 1)
    # Decode batches have query_indptr[t] == t, so the guess is right and no search runs.
    if (start > t) | (end <= t):
        lo = 0
        hi = num_seqs - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if tl.load(query_indptr_ptr + mid) <= t:
                lo = mid
            else:
                hi = mid - 1
        b = lo
    return b


@triton.jit
def _paged_attention_kernel(
    q_ptr, kv_ptr, block_tables_ptr, seq_lens_ptr, query_indptr_ptr, out_ptr, part_out_ptr, part_lse_ptr,
    num_seqs, max_pages, chunk_pages, num_heads, stride_qt, stride_qh, stride_ot, stride_oh,
    k_base, v_plane, token_stride, sm_scale_log2,
    GROUP: tl.constexpr, PAGE_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, USE_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    SPLIT: tl.constexpr,
):  # fmt: skip
    """Grid (T, chunks, Hk): query row t against KV chunk c (``chunk_pages`` pages) of its
    sequence, causally. With SPLIT the result is a partial in slot ``t * chunks + c``; without,
    the single chunk covers everything and the output row is written directly."""
    t = tl.program_id(0)
    c = tl.program_id(1)
    kvh = tl.program_id(2)
    b = _sequence_of_row(query_indptr_ptr, t, num_seqs)
    first_row = tl.load(query_indptr_ptr + b)
    num_rows = tl.load(query_indptr_ptr + b + 1) - first_row
    kv_len = tl.load(seq_lens_ptr + b) - num_rows + (t - first_row) + 1  # causal: up to its position
    chunk_tokens = chunk_pages * PAGE_SIZE
    num_tokens = tl.minimum(tl.maximum(kv_len - c * chunk_tokens, 0), chunk_tokens)
    pages_ptr = block_tables_ptr + b.to(tl.int64) * max_pages + c * chunk_pages
    r = tl.arange(0, BLOCK_M)
    row_ok = r < GROUP
    head = kvh * GROUP + r
    row_t = tl.zeros([BLOCK_M], tl.int32) + t
    acc, m, l = _attend_pages(
        q_ptr, kv_ptr, pages_ptr, num_tokens, row_t, head, row_ok, kvh,
        stride_qt, stride_qh, k_base, v_plane, token_stride, sm_scale_log2,
        PAGE_SIZE, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, USE_DOT, DOT_PRECISION,
    )  # fmt: skip
    if SPLIT:
        slot = row_t * tl.num_programs(1) + c
        _store_partial(part_out_ptr, part_lse_ptr, slot, head, row_ok, acc, m, l, num_heads, HEAD_DIM, BLOCK_D)
    else:
        offs_d = tl.arange(0, BLOCK_D)
        out = acc / tl.where(l > 0, l, 1.0)[:, None]
        o_off = t.to(tl.int64) * stride_ot + head.to(tl.int64) * stride_oh
        mask = row_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
        tl.store(out_ptr + o_off[:, None] + offs_d[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _merge_partials_kernel(
    part_out_ptr, part_lse_ptr, merge_indptr_ptr, merge_slots_ptr, out_ptr,
    num_heads, slots_per_row, stride_ot, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, UNIFORM: tl.constexpr,
):  # fmt: skip
    """Grid (T, cdiv(H, BLOCK_H)): out[t] = sum_i 2^(lse_i - M) out_i / sum_i 2^(lse_i - M) over
    row t's slots (M = max lse_i). UNIFORM: row t owns slots [t*slots_per_row, (t+1)*slots_per_row);
    otherwise merge_slots[merge_indptr[t] : merge_indptr[t+1]]."""
    t = tl.program_id(0)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = heads < num_heads
    offs_d = tl.arange(0, BLOCK_D)
    if UNIFORM:
        begin = t * slots_per_row
        end = begin + slots_per_row
    else:
        begin = tl.load(merge_indptr_ptr + t)
        end = tl.load(merge_indptr_ptr + t + 1)
    m = tl.full([BLOCK_H], float("-inf"), tl.float32)
    for i in range(begin, end):
        if UNIFORM:
            slot = i
        else:
            slot = tl.load(merge_slots_ptr + i)
        lse = tl.load(part_lse_ptr + slot.to(tl.int64) * num_heads + heads, mask=h_ok, other=float("-inf"))
        m = tl.maximum(m, lse)
    m = tl.where(m == float("-inf"), 0.0, m)  # a head with no tokens at all merges to zeros
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    den = tl.zeros([BLOCK_H], tl.float32)
    mask = h_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    for i in range(begin, end):
        if UNIFORM:
            slot = i
        else:
            slot = tl.load(merge_slots_ptr + i)
        idx = slot.to(tl.int64) * num_heads + heads
        w = tl.exp2(tl.load(part_lse_ptr + idx, mask=h_ok, other=float("-inf")) - m)
        part = tl.load(part_out_ptr + idx[:, None] * HEAD_DIM + offs_d[None, :], mask=mask, other=0.0)
        acc += w[:, None] * part
        den += w
    out = acc / tl.where(den > 0, den, 1.0)[:, None]
    o_off = t.to(tl.int64) * stride_ot + heads.to(tl.int64) * stride_oh
    tl.store(out_ptr + o_off[:, None] + offs_d[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)
