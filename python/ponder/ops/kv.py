"""KV cache ops: ``copy_pages`` (batched copy-on-write of pages)."""

from __future__ import annotations

import torch

from ponder.ops import reference
from ponder.ops._registry import implementation, register


def _check_copy_pages(kv_cache: torch.Tensor, src_pages: torch.Tensor, dst_pages: torch.Tensor) -> None:
    if not isinstance(kv_cache, torch.Tensor) or kv_cache.dim() != 6 or kv_cache.shape[1] != 2:
        shape = tuple(kv_cache.shape) if isinstance(kv_cache, torch.Tensor) else type(kv_cache).__name__
        raise ValueError(f"kv_cache must be a tensor of shape [L, 2, P, S, Hk, D], got {shape}")
    if not kv_cache.is_contiguous():
        raise ValueError("kv_cache must be contiguous")
    for name, t in (("src_pages", src_pages), ("dst_pages", dst_pages)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or t.dim() != 1:
            desc = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise TypeError(f"{name} must be a 1-D int32 tensor, got {desc}")
        if t.device != kv_cache.device:
            raise ValueError(f"{name} is on {t.device} but kv_cache is on {kv_cache.device}")
    if src_pages.shape != dst_pages.shape:
        raise ValueError(
            f"src_pages and dst_pages must have the same length, got {src_pages.numel()} and {dst_pages.numel()}"
        )
    num_pages = kv_cache.shape[2]
    if src_pages.numel():
        lo = int(torch.minimum(src_pages.min(), dst_pages.min()))
        hi = int(torch.maximum(src_pages.max(), dst_pages.max()))
        if lo < 0 or hi >= num_pages:
            raise ValueError(f"page ids must lie in [0, {num_pages}), got values in [{lo}, {hi}]")


@torch.library.custom_op("ponder::copy_pages", mutates_args=("kv_cache",))
def _copy_pages_op(kv_cache: torch.Tensor, src_pages: torch.Tensor, dst_pages: torch.Tensor, backend: str) -> None:
    implementation("copy_pages", backend, kv_cache.device)(kv_cache, src_pages, dst_pages)


@_copy_pages_op.register_fake
def _(kv_cache, src_pages, dst_pages, backend):
    return None


register("copy_pages", "torch")(reference.copy_pages)


@register("copy_pages", "cuda")
def _copy_pages_cuda(kv_cache: torch.Tensor, src_pages: torch.Tensor, dst_pages: torch.Tensor) -> None:
    from ponder import _core

    L, _, P = kv_cache.shape[:3]
    page_bytes = kv_cache[0, 0, 0].numel() * kv_cache.element_size()
    _core.copy_pages(
        kv_cache.data_ptr(), src_pages.data_ptr(), dst_pages.data_ptr(), src_pages.numel(), 2 * L, P,
        page_bytes, torch.cuda.current_stream(kv_cache.device).cuda_stream,
    )


def copy_pages(kv_cache: torch.Tensor, src_pages: torch.Tensor, dst_pages: torch.Tensor, backend: str = "auto") -> None:
    """Copy page ``src_pages[i]`` onto ``dst_pages[i]`` for every layer and both K and V.

    This executes the copy-on-write list returned by ``PageTable.append`` before a forward.

    kv_cache: ``[L, 2, P, S, Hk, D]``, contiguous, modified in place.
    src_pages, dst_pages: ``[num_pairs]`` int32 on the same device; ids in ``[0, P)``;
    destinations distinct and never sources.

    Example (S=2, one layer, K plane shown)::

        page 0: [a b]   page 1: [ . . ]      copy_pages(kv, [0], [1])  ->  page 1: [a b]
    """
    _check_copy_pages(kv_cache, src_pages, dst_pages)
    if src_pages.numel() == 0:
        return
    _copy_pages_op(kv_cache, src_pages, dst_pages, backend)
