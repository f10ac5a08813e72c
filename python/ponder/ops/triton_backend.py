"""Launchers of the Triton kernels (``ponder.triton``), registered as the ``"triton"`` backend.

Importing this module never imports Triton: each launcher loads its kernel module on first use,
and the registry only offers the backend when Triton imports and the tensors are on CUDA (or
``TRITON_INTERPRET=1`` runs the kernels on the CPU, for tests).

Two attention launchers, each the ``"triton"`` backend of the op of the same name, also callable
directly with launch options (``num_splits``, ``out``):

- ``paged_attention``: one query row per program and KV chunk (split-KV "flash decoding"); the
  registry runs it for decode. Prefill batches (more query rows than sequences) go to the torch
  reference instead, which batches the rows of a sequence into matrix products; a per-row kernel
  would read the KV once per row.
- ``shared_prefix_attention``: the same inner loop driven by an attention plan
  (``ponder.attention_plan``), reading each tree segment's KV once for all the branches under it.
"""

from __future__ import annotations

import functools
import importlib
from typing import Optional

import torch

from ponder.attention_plan import kernel_item_options
from ponder.ops import _checks, reference
from ponder.ops._registry import register
from ponder.ops.value_score import MODES as _SCORE_MODES  # the kernel's MODE constexpr is the index

__all__ = ["paged_attention", "plan_options", "shared_prefix_attention"]

_LOG2E = 1.4426950408889634
# Target elements of the [rows, tokens, D] product tile of the non-tensor-core path (at least 16
# tokens are loaded per step): M=1, D=128 gets 32 tokens and 127 registers instead of 237 at 64.
_PRODUCT_TILE = 4096
# Largest query-row tile of the shared-prefix kernel: 128 x 128 fp32 accumulators fit 8 warps
# (244 registers); 256 rows spill.
_MAX_TILE_ROWS = 128
# Split-KV decode keeps at least this many tokens per chunk: below it the extra partial writes
# and the merge cost more than the parallelism gains.
_MIN_CHUNK_TOKENS = 256


@functools.lru_cache(maxsize=None)
def _kernel_module(name: str):
    return importlib.import_module(f"ponder.triton.{name}")


def _launch(module: str, kernel: str, grid, *args, **kwargs) -> None:
    """Launch ``ponder.triton.<module>.<kernel>`` on ``grid`` (on the CPU the kernels run in
    Triton's interpreter, which needs TRITON_INTERPRET=1 set before Triton is imported)."""
    getattr(_kernel_module(module), kernel)[grid](*args, **kwargs)


def _cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _attention_tiles(rows: int, head_dim: int):
    """(BLOCK_M, BLOCK_D, BLOCK_N, USE_DOT, num_warps) for a tile of ``rows`` query rows: tensor
    cores (tl.dot) from 16 rows on, broadcast-multiply-reduce below that. Sizes keep every variant
    within 255 registers per thread without spills (ptxas -v for sm_90a at D=128)."""
    block_m = _pow2(rows)
    block_d = max(16, _pow2(head_dim))
    if block_m >= 16:
        if block_m == 16:
            return block_m, block_d, 32, True, 4  # 198 registers
        return block_m, block_d, 64 if block_m <= 64 else 32, True, 8  # 158 (M=64), 244 (M=128)
    block_n = max(16, min(64, _PRODUCT_TILE // (block_m * block_d)))
    # [M, N, D] products above 8192 elements need 8 warps (M=8, N=16: 254 -> 166 registers).
    return block_m, block_d, block_n, False, 4 if block_m * block_n * block_d <= 8192 else 8


def _dot_precision(kv_cache: torch.Tensor) -> str:
    # fp32 caches keep full fp32 products (tf32 would cost ~3 decimal digits); 16-bit operands
    # are exact on tensor cores whatever this says.
    return "ieee" if kv_cache.dtype == torch.float32 else "tf32"


def _layer_offsets(kv_cache: torch.Tensor, layer: int):
    """(k_base, v_plane, token_stride) in elements for ``kv_cache [L, 2, P, S, Hk, D]``."""
    _, _, P, S, Hk, D = kv_cache.shape
    plane = P * S * Hk * D
    return layer * 2 * plane, plane, Hk * D


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    """x with a unit stride in its last dimension (heads may be strided)."""
    return x if x.stride(-1) == 1 else x.contiguous()


# ---- KV cache ---------------------------------------------------------------------------------
@register("append_kv", "triton")
def _append_kv(kv_cache, layer, k, v, slot_mapping) -> None:
    T, Hk, D = k.shape
    if T == 0:
        return
    k, v = k.contiguous(), v.contiguous()
    k_base, plane, token_elems = _layer_offsets(kv_cache, layer)
    block = min(1024, _pow2(token_elems))
    grid = (T, _cdiv(token_elems, block))
    _launch(
        "kv", "_append_kv_kernel", grid,
        kv_cache, k, v, slot_mapping, k_base, k_base + plane, token_elems, k.stride(0), v.stride(0), BLOCK=block,
    )  # fmt: skip


@register("copy_pages", "triton")
def _copy_pages(kv_cache, src_pages, dst_pages) -> None:
    n = src_pages.numel()
    if n == 0:
        return
    L, _, P = kv_cache.shape[:3]
    page_elems = kv_cache[0, 0, 0].numel()
    block = min(2048, _pow2(page_elems))
    grid = (n, 2 * L, _cdiv(page_elems, block))
    _launch("kv", "_copy_pages_kernel", grid, kv_cache, src_pages, dst_pages, P, page_elems, BLOCK=block)


# ---- attention --------------------------------------------------------------------------------
def _merge(part_out, part_lse, merge_indptr, merge_slots, out, slots_per_row: int) -> None:
    T, H, D = out.shape
    block_d = max(16, _pow2(D))
    block_h = max(1, min(_pow2(H), 4096 // block_d))
    uniform = merge_indptr is None
    dummy = part_lse  # unused pointer arguments of the uniform layout
    _launch(
        "attention", "_merge_partials_kernel", (T, _cdiv(H, block_h)),
        part_out, part_lse, dummy if uniform else merge_indptr, dummy if uniform else merge_slots, out,
        H, slots_per_row, out.stride(0), out.stride(1),
        HEAD_DIM=D, BLOCK_D=block_d, BLOCK_H=block_h, UNIFORM=uniform,
    )  # fmt: skip


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _default_splits(q: torch.Tensor, num_kv_heads: int, max_tokens: int) -> int:
    if q.device.type != "cuda":
        return 1
    sms = _num_sms(q.device.index if q.device.index is not None else torch.cuda.current_device())
    want = _cdiv(2 * sms, max(1, q.shape[0] * num_kv_heads))  # about two programs per SM
    return max(1, min(want, _cdiv(max_tokens, _MIN_CHUNK_TOKENS)))


def paged_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    layer: int,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_indptr: torch.Tensor,
    scale: float,
    *,
    num_splits: Optional[int] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-row paged attention (arguments as ``ponder.ops.paged_attention``, unchecked).

    Each program attends one query row (its G heads of one KV head) to one chunk of its
    sequence's KV, causally; with ``num_splits`` > 1 chunks the partials are merged by
    log-sum-exp. ``num_splits`` defaults to about two programs per SM on CUDA, 1 elsewhere.
    Exact for any ragged batch, efficient for decode (one row per sequence).
    """
    T, H, D = q.shape
    _, _, _, S, Hk, _ = kv_cache.shape
    G = H // Hk
    B, max_pages = block_tables.shape
    out = torch.empty_like(q) if out is None else out
    if T == 0:
        return out
    q = _rows_contiguous(q)
    block_tables = block_tables.contiguous()
    splits = num_splits if num_splits is not None else _default_splits(q, Hk, max_pages * S)
    chunk_pages = _cdiv(max_pages, max(1, min(splits, max_pages)))
    splits = _cdiv(max_pages, chunk_pages)
    block_m, block_d, block_n, use_dot, num_warps = _attention_tiles(G, D)
    k_base, v_plane, token_stride = _layer_offsets(kv_cache, layer)
    split = splits > 1
    if split:
        part_out = torch.empty(T * splits, H, D, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(T * splits, H, dtype=torch.float32, device=q.device)
    else:
        part_out = part_lse = out  # unused by the single-chunk variant
    _launch(
        "attention", "_paged_attention_kernel", (T, splits, Hk),
        q, kv_cache, block_tables, seq_lens, query_indptr, out, part_out, part_lse,
        B, max_pages, chunk_pages, H, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_base, v_plane, token_stride, float(scale) * _LOG2E,
        GROUP=G, PAGE_SIZE=S, HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n,
        USE_DOT=use_dot, DOT_PRECISION=_dot_precision(kv_cache), SPLIT=split, num_warps=num_warps,
    )  # fmt: skip
    if split:
        _merge(part_out, part_lse, None, None, out, splits)
    return out


@register("paged_attention", "triton")
def _paged_attention_or_prefill(q, kv_cache, layer, block_tables, seq_lens, query_indptr, scale) -> torch.Tensor:
    if q.shape[0] != seq_lens.shape[0]:
        # Prefill: the reference's batched matrix products beat re-reading the KV per row.
        return reference.paged_attention(q, kv_cache, layer, block_tables, seq_lens, query_indptr, scale)
    return paged_attention(q, kv_cache, layer, block_tables, seq_lens, query_indptr, scale)


def plan_options(page_size: int, group_size: int, *, tokens_per_item: int = 1024, rows_per_item: int = 64) -> dict:
    """Keyword arguments for ``plan_attention`` that suit ``shared_prefix_attention``: items of
    about ``tokens_per_item`` KV tokens (long prefixes spread over many programs) and at most
    ``rows_per_item`` query-head rows (``max_queries_per_item * group_size``) per tile."""
    return kernel_item_options(page_size, group_size, tokens_per_item=tokens_per_item, rows_per_item=rows_per_item)


@register("shared_prefix_attention", "triton")
def shared_prefix_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    layer: int,
    plan,
    scale: float,
    *,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Decode attention through an attention plan: each KV segment is read once per item.

    q: ``[B, H, D]``; row b is branch b's decode query (the plan's query b).
    kv_cache: ``[L, 2, P, S, Hk, D]``; plan: a ``DeviceAttentionPlan`` on q's device
    (``plan_attention(block_tables, seq_lens, S, **plan_options(S, H // Hk)).to(device)``),
    built once per decode step and reused for every layer. Returns ``[B, H, D]`` in q's dtype,
    equal to ``paged_attention`` with one query row per branch.
    """
    _checks.plan_fits(q, kv_cache, plan)
    T, H, D = q.shape
    _, _, _, S, Hk, _ = kv_cache.shape
    G = H // Hk
    if plan.max_item_queries * G > _MAX_TILE_ROWS:
        raise ValueError(
            f"the plan puts up to {plan.max_item_queries} queries x {G} heads in one item, over {_MAX_TILE_ROWS} rows; "
            f"build it with max_queries_per_item <= {_MAX_TILE_ROWS // G} (see plan_options)"
        )
    out = torch.empty_like(q) if out is None else out
    if T == 0:
        return out
    q = _rows_contiguous(q)
    num_slots = plan.item_queries.shape[0]
    part_out = torch.empty(num_slots, H, D, dtype=torch.float32, device=q.device)
    part_lse = torch.empty(num_slots, H, dtype=torch.float32, device=q.device)
    k_base, v_plane, token_stride = _layer_offsets(kv_cache, layer)
    # Items with several queries first (one tile of max_item_queries * G rows), then the
    # single-query items with a G-row tile, so tails do not pay for the wide tile.
    for first, last, rows in (
        (0, plan.num_shared_items, plan.max_item_queries * G),
        (plan.num_shared_items, plan.num_items, G),
    ):
        if last <= first:
            continue
        block_m, block_d, block_n, use_dot, num_warps = _attention_tiles(rows, D)
        _launch(
            "attention", "_shared_prefix_attention_kernel", (last - first, Hk),
            q, kv_cache, plan.item_page_indptr, plan.item_pages, plan.item_num_tokens, plan.item_query_indptr,
            plan.item_queries, part_out, part_lse,
            first, H, q.stride(0), q.stride(1), k_base, v_plane, token_stride, float(scale) * _LOG2E,
            GROUP=G, PAGE_SIZE=S, HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n, USE_DOT=use_dot,
            DOT_PRECISION=_dot_precision(kv_cache), num_warps=num_warps,
        )  # fmt: skip
    _merge(part_out, part_lse, plan.merge_indptr, plan.merge_slots, out, 0)
    return out


# ---- sampling and scoring -----------------------------------------------------------------------
@register("sample", "triton")
def _sample(logits, keys, temperature, top_k, top_p):
    B, V = logits.shape
    logits = _rows_contiguous(logits)
    tokens = torch.empty(B, dtype=torch.int64, device=logits.device)
    logprobs = torch.empty(B, dtype=torch.float32, device=logits.device)
    if B == 0:
        return tokens, logprobs
    _launch(
        "sampling", "_sample_kernel", (B,),
        logits, keys.contiguous(), temperature, top_k, top_p, tokens, logprobs, V, logits.stride(0),
        BLOCK_V=min(1024, _pow2(V)), NUM_PIVOTS=16, num_warps=8,
    )  # fmt: skip
    return tokens, logprobs


@register("value_score", "triton")
def _value_score(hidden, rows, norm_weight, eps, direction, bias, parent_score, depth, mode):
    M = rows.shape[0]
    C = hidden.shape[1]
    hidden = _rows_contiguous(hidden)
    score = torch.empty(M, dtype=torch.float32, device=hidden.device)
    path = torch.empty(M, dtype=torch.float32, device=hidden.device)
    if M == 0:
        return score, path
    direction = direction.contiguous()
    _launch(
        "value_score", "_value_score_kernel", (M,),
        hidden, rows, direction if norm_weight is None else norm_weight.contiguous(), direction, parent_score,
        depth, score, path, C, hidden.stride(0), float(eps), float(bias),
        HAS_NORM=norm_weight is not None, MODE=_SCORE_MODES.index(mode), BLOCK_C=min(1024, _pow2(C)),
    )  # fmt: skip
    return score, path

