"""Launchers of the CUDA kernels (``kernels/cuda``, compiled into ``ponder._core`` when ponder is
built with ``PONDER_CUDA``), registered as the ``"cuda"`` backend.

Importing this module needs no GPU: the registry offers the backend only when the extension was
built with the kernels (``_core.CUDA_BUILT``) and the tensors are on a CUDA device. Each launcher
runs on the current stream of the tensors' device and allocates only its outputs and partials.

- ``shared_prefix_attention``: one block per (plan item, KV head) streams the item's KV through
  shared memory once for all of its query rows (tensor-core products for bf16 / fp16 caches, fp32
  FMA loops for fp32 caches), then one block per query merges its partials by log-sum-exp.
- ``value_score``: one block per scored step (norm, dot, sigmoid, path aggregation).
"""

from __future__ import annotations

from typing import Optional

import torch

from ponder.attention_plan import kernel_item_options
from ponder.ops import _checks
from ponder.ops._registry import register
from ponder.ops.value_score import MODES as _SCORE_MODES  # the kernel's mode code is the index

try:
    from ponder import _core
except ImportError:  # the pure-Python parts still work without the extension
    _core = None

__all__ = ["plan_options", "shared_prefix_attention"]

# Kernel dtype codes (csrc/cuda/launchers.h).
_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
# Query rows (branches x group heads) one attention block holds (kernels/cuda: spa::kRows).
_ROWS_PER_BLOCK = 64
_MAX_HEAD_DIM = 256


def _stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def _dtype_code(name: str, t: torch.Tensor) -> int:
    code = _DTYPES.get(t.dtype)
    if code is None:
        raise ValueError(f"the cuda backend reads float32 / bfloat16 / float16 {name}, got {t.dtype}")
    return code


def plan_options(page_size: int, group_size: int, *, tokens_per_item: int = 1024) -> dict:
    """Keyword arguments for ``plan_attention`` that suit the CUDA ``shared_prefix_attention``:
    items of about ``tokens_per_item`` KV tokens (a long prefix spreads over many blocks) and at
    most as many queries as fill one block's 64 rows (``64 // group_size``, at least 1)."""
    return kernel_item_options(page_size, group_size, tokens_per_item=tokens_per_item, rows_per_item=_ROWS_PER_BLOCK)


@register("shared_prefix_attention", "cuda")
def shared_prefix_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    layer: int,
    plan,
    scale: float,
    *,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Decode attention through an attention plan on the GPU (arguments as
    ``ponder.ops.shared_prefix_attention``; index values unchecked here).

    kv_cache must be contiguous float32 / bfloat16 / float16 with a head dim of at most 256; q is
    cast to the cache's dtype (the tensor-core operands). Any plan works -- items with more rows
    than a block holds are attended 64 rows at a time -- but plans from ``plan_options`` read each
    segment once. Returns ``[B, H, D]`` in q's dtype (written into ``out`` when given).
    """
    _checks.plan_fits(q, kv_cache, plan)
    B, H, D = q.shape
    _, _, _, S, Hk, _ = kv_cache.shape
    if D > _MAX_HEAD_DIM:
        raise ValueError(f"the cuda shared_prefix_attention takes head dims up to {_MAX_HEAD_DIM}, got D = {D}")
    if not kv_cache.is_contiguous():
        raise ValueError("the cuda shared_prefix_attention reads a contiguous kv_cache")
    code = _dtype_code("kv_cache", kv_cache)
    if out is None:
        out = torch.empty_like(q)
    if B == 0:
        return out
    qc = q.to(kv_cache.dtype).contiguous()
    arrays = [t.contiguous() for t in (plan.item_page_indptr, plan.item_pages, plan.item_num_tokens,
                                       plan.item_query_indptr, plan.item_queries, plan.merge_indptr,
                                       plan.merge_slots)]  # fmt: skip
    num_slots = arrays[4].shape[0]
    part_out = torch.empty(num_slots, H, D, dtype=torch.float32, device=q.device)
    part_lse = torch.empty(num_slots, H, dtype=torch.float32, device=q.device)
    merged = out if out.dtype == torch.float32 and out.is_contiguous() else torch.empty(B, H, D, device=q.device)
    plane = kv_cache[0, 0].numel()
    stream = _stream(q)
    with torch.cuda.device(q.device):
        _core.shared_prefix_attention_cuda(
            qc.data_ptr(), kv_cache.data_ptr(), code, layer * 2 * plane, plane,
            *(a.data_ptr() for a in arrays[:5]), 0, arrays[2].shape[0], part_out.data_ptr(), part_lse.data_ptr(),
            H, Hk, D, S, float(scale), stream,
        )  # fmt: skip
        _core.merge_partials_cuda(part_out.data_ptr(), part_lse.data_ptr(), arrays[5].data_ptr(), arrays[6].data_ptr(),
                                  merged.data_ptr(), B, H, D, stream)  # fmt: skip
    if merged is not out:
        out.copy_(merged)
    return out


@register("value_score", "cuda")
def _value_score(hidden, rows, norm_weight, eps, direction, bias, parent_score, depth, mode):
    M = rows.shape[0]
    C = hidden.shape[1]
    score = torch.empty(M, dtype=torch.float32, device=hidden.device)
    path = torch.empty(M, dtype=torch.float32, device=hidden.device)
    if M == 0:
        return score, path
    code = _dtype_code("hidden", hidden)
    if hidden.stride(1) != 1 or hidden.stride(0) < C:  # the kernel walks rows of C unit-stride elements
        hidden = hidden.contiguous()
    # The weights enter the kernel in fp32: exact for every float dtype, and the reference's
    # products round to the hidden dtype the same way from them.
    weight = None if norm_weight is None else norm_weight.float().contiguous()
    direction = direction.float().contiguous()
    rows, parent_score, depth = rows.contiguous(), parent_score.contiguous(), depth.contiguous()
    with torch.cuda.device(hidden.device):
        _core.value_score_cuda(
            hidden.data_ptr(), code, rows.data_ptr(), M, 0 if weight is None else weight.data_ptr(),
            direction.data_ptr(), parent_score.data_ptr(), depth.data_ptr(), score.data_ptr(), path.data_ptr(),
            C, hidden.stride(0), float(eps), float(bias), _SCORE_MODES.index(mode), _stream(hidden),
        )  # fmt: skip
    return score, path
