"""KV cache ops: ``copy_pages`` (batched copy-on-write of pages) and ``append_kv`` (write new K/V)."""

from __future__ import annotations

from typing import Optional

import torch

from ponder.ops import _checks, reference
from ponder.ops._registry import direct_call, implementation, register, register_host

try:
    from ponder import _core
except ImportError:  # the pure-Python parts still work without the extension
    _core = None


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


def _copy_pages_host(kv_cache: torch.Tensor, src_pages: torch.Tensor, dst_pages: torch.Tensor) -> None:
    """``ponder._core.copy_pages_cpu``: whole pages copied as bytes in every layer's K and V planes
    (any dtype; the same bytes as the reference). It also refuses repeated destinations and
    destinations that are sources, which the reference leaves to the caller."""
    L, _, P = kv_cache.shape[:3]
    src, dst = src_pages.contiguous(), dst_pages.contiguous()
    page_bytes = kv_cache[0, 0, 0].numel() * kv_cache.element_size()
    _core.copy_pages_cpu(kv_cache.data_ptr(), 2 * L, P, page_bytes, src.data_ptr(), dst.data_ptr(), src.numel())


if _core is not None and hasattr(_core, "copy_pages_cpu"):
    register_host("copy_pages")(_copy_pages_host)


@register("copy_pages", "cuda")
def _copy_pages_cuda(kv_cache: torch.Tensor, src_pages: torch.Tensor, dst_pages: torch.Tensor) -> None:
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
    if direct_call(kv_cache, src_pages, dst_pages):
        # eager: skip the custom op (its first call imports torch._dynamo, over a second)
        implementation("copy_pages", backend, kv_cache.device)(kv_cache, src_pages, dst_pages)
        return
    _copy_pages_op(kv_cache, src_pages, dst_pages, backend)


def _check_append_kv(kv_cache, layer, k, v, slot_mapping, check: Optional[bool]) -> None:
    _checks.kv_cache(kv_cache, layer)
    _, _, P, S, Hk, D = kv_cache.shape
    for name, t in (("k", k), ("v", v)):
        _checks.tensor(name, t, 3, None, "[T, Hk, D]")
        if t.dtype != kv_cache.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but kv_cache has {kv_cache.dtype}; they must match")
        _checks.dim_size(name, t, 1, Hk, "Hk, the kv_cache's KV heads")
        _checks.dim_size(name, t, 2, D, "D, the kv_cache's head dim")
    if v.shape[0] != k.shape[0]:
        raise ValueError(f"k and v must have the same number of rows T, got {k.shape[0]} and {v.shape[0]}")
    _checks.tensor("slot_mapping", slot_mapping, 1, (torch.int64,), "1-D int64 [T]")
    _checks.dim_size("slot_mapping", slot_mapping, 0, k.shape[0], "T, the rows of k and v")
    _checks.same_device("kv_cache", kv_cache, k=k, v=v, slot_mapping=slot_mapping)
    if _checks.value_checks(check, kv_cache.device) and slot_mapping.numel():
        slots = _checks.host_array(slot_mapping)
        lo, hi = int(slots.min()), int(slots.max())
        if lo < -1 or hi >= P * S:
            raise IndexError(
                f"slot_mapping values must be -1 (skip) or lie in [0, {P * S}) (P * S = {P} * {S}), "
                f"got values in [{lo}, {hi}]"
            )


@torch.library.custom_op("ponder::append_kv", mutates_args=("kv_cache",))
def _append_kv_op(
    kv_cache: torch.Tensor, layer: int, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor, backend: str
) -> None:
    implementation("append_kv", backend, kv_cache.device)(kv_cache, layer, k, v, slot_mapping)


@_append_kv_op.register_fake
def _(kv_cache, layer, k, v, slot_mapping, backend):
    return None


register("append_kv", "torch")(reference.append_kv)


def _append_kv_host(kv_cache, layer, k, v, slot_mapping) -> None:
    """``ponder._core.append_kv_cpu`` for fp32 CPU tensors (rows copied to their slots, the
    same bytes the reference writes); other dtypes and layouts run the reference."""
    _, _, P, S, Hk, D = kv_cache.shape
    dense = all(t.stride(2) == 1 and t.stride(1) == D for t in (k, v))
    if kv_cache.dtype != torch.float32 or not dense or not kv_cache.is_contiguous():
        reference.append_kv(kv_cache, layer, k, v, slot_mapping)
        return
    slots = slot_mapping.contiguous()
    plane = kv_cache[layer]
    _core.append_kv_cpu(plane[0].data_ptr(), plane[1].data_ptr(), P * S, Hk * D, k.data_ptr(), k.stride(0),
                        v.data_ptr(), v.stride(0), slots.data_ptr(), k.shape[0])


if _core is not None and hasattr(_core, "append_kv_cpu"):
    register_host("append_kv")(_append_kv_host)


def append_kv(
    kv_cache: torch.Tensor,
    layer: int,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_mapping: torch.Tensor,
    backend: str = "auto",
    *,
    check: Optional[bool] = None,
) -> None:
    """Write the new tokens' K and V of one layer into their cache slots.

    kv_cache: ``[L, 2, P, S, Hk, D]`` float32 / bfloat16 / float16, contiguous, modified in place.
    layer: which layer's K/V planes to write, in ``[0, L)``.
    k, v: ``[T, Hk, D]`` in kv_cache's dtype, same device.
    slot_mapping: ``[T]`` int64; ``k[t]`` goes to ``kv_cache[layer, 0, slot // S, slot % S]`` and
    ``v[t]`` to ``kv_cache[layer, 1, ...]``; slot -1 skips row t (padding). Non-negative slots
    must be distinct.
    check: validate slot values (a device sync). Default: on CPU tensors only.

    Example (S=4, T=3)::

        slot_mapping = [9, 10, -1]   ->  row 0 to page 2 offset 1, row 1 to page 2 offset 2,
                                          row 2 is not written
    """
    _check_append_kv(kv_cache, layer, k, v, slot_mapping, check)
    if k.shape[0] == 0:
        return
    if direct_call(kv_cache, k, v, slot_mapping):
        implementation("append_kv", backend, kv_cache.device)(kv_cache, layer, k, v, slot_mapping)
        return
    _append_kv_op(kv_cache, layer, k, v, slot_mapping, backend)
