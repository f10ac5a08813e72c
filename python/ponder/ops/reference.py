"""Pure-PyTorch reference implementations of ponder's device ops.

These are the CPU path, the oracle every kernel is tested against, and the baseline every
benchmark measures. They favour clarity over speed.
"""

from __future__ import annotations

import torch


def copy_pages(kv_cache: torch.Tensor, src_pages: torch.Tensor, dst_pages: torch.Tensor) -> None:
    """Copy page ``src_pages[i]`` onto page ``dst_pages[i]`` in every layer, for K and V.

    kv_cache: ``[L, 2, P, S, Hk, D]`` any dtype, modified in place.
    src_pages, dst_pages: ``[num_pairs]`` int32. Destinations must be distinct and must not be
    sources (copy-on-write targets are fresh pages), so the order of the copies does not matter.
    """
    if src_pages.numel() == 0:
        return
    src = src_pages.to(device=kv_cache.device, dtype=torch.long)
    dst = dst_pages.to(device=kv_cache.device, dtype=torch.long)
    kv_cache[:, :, dst] = kv_cache[:, :, src]
