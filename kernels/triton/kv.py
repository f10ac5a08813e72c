"""KV cache kernels: ``append_kv`` (scatter new tokens into their slots) and ``copy_pages``
(batched copy-on-write of whole pages across every layer and both K and V).

``kv_cache [L, 2, P, S, Hk, D]`` is contiguous, so a token's K of one layer is ``Hk * D``
consecutive elements at ``((layer * 2 + 0) * P * S + slot) * Hk * D`` and a page of one plane is
``S * Hk * D`` consecutive elements.
"""

import triton
import triton.language as tl


@triton.jit
def _append_kv_kernel(
    kv_ptr, k_ptr, v_ptr, slot_mapping_ptr,
    k_plane, v_plane, token_elems, stride_kt, stride_vt,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Grid (T, cdiv(Hk*D, BLOCK)): row t's K and V (Hk*D elements each, rows contiguous) go to
    slot ``slot_mapping[t]``; slot -1 skips the row."""
    t = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    slot = tl.load(slot_mapping_ptr + t)
    if slot >= 0:
        mask = offs < token_elems
        dst = slot * token_elems + offs  # slot is int64
        k = tl.load(k_ptr + t.to(tl.int64) * stride_kt + offs, mask=mask)
        v = tl.load(v_ptr + t.to(tl.int64) * stride_vt + offs, mask=mask)
        tl.store(kv_ptr + k_plane + dst, k, mask=mask)
        tl.store(kv_ptr + v_plane + dst, v, mask=mask)


@triton.jit
def _copy_pages_kernel(
    kv_ptr, src_pages_ptr, dst_pages_ptr, num_pages, page_elems,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Grid (pairs, 2L, cdiv(page_elems, BLOCK)): page src -> page dst in one of the 2L planes."""
    pair = tl.program_id(0)
    plane = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < page_elems
    src = tl.load(src_pages_ptr + pair).to(tl.int64)
    dst = tl.load(dst_pages_ptr + pair).to(tl.int64)
    base = plane * num_pages
    x = tl.load(kv_ptr + (base + src) * page_elems + offs, mask=mask)
    tl.store(kv_ptr + (base + dst) * page_elems + offs, x, mask=mask)
