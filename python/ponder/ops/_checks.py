"""Cheap argument checks shared by the public op wrappers.

Shape, dtype and device checks read only tensor metadata. Checks of tensor values need a device
to host copy, so the wrappers run them only when the data is on the CPU (where they cost a few
microseconds) or when the caller asks with ``check=True``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ponder.ops import _registry

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} tensor of shape {tuple(t.shape)} on {t.device}"
    return f"{type(t).__name__} {t!r}"


def tensor(name: str, t, dim: Optional[int], dtypes: Optional[Sequence[torch.dtype]], what: str) -> torch.Tensor:
    """``t`` must be a tensor with ``dim`` dimensions and one of ``dtypes``; ``what`` describes the
    expected value for the error message, e.g. ``"[T, H, D] float"``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a {what} tensor, got {_describe(t)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must be a {what} tensor, got {_describe(t)}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be a {what} tensor, got {_describe(t)}")
    return t


def same_device(ref_name: str, ref: torch.Tensor, **others: torch.Tensor) -> None:
    for name, t in others.items():
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; both must be on one device")


def dim_size(name: str, t: torch.Tensor, axis: int, expected: int, meaning: str) -> None:
    if t.shape[axis] != expected:
        raise ValueError(
            f"{name} has size {t.shape[axis]} in dimension {axis} (shape {tuple(t.shape)}), expected {expected} ({meaning})"
        )


def kv_cache(t, layer) -> torch.Tensor:
    """``t`` must be a contiguous ``[L, 2, P, S, Hk, D]`` float tensor and ``layer`` in ``[0, L)``."""
    if not isinstance(t, torch.Tensor) or t.dim() != 6 or t.shape[1] != 2:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"kv_cache must be a tensor of shape [L, 2, P, S, Hk, D], got {shape}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"kv_cache must be float32, bfloat16 or float16, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError("kv_cache must be contiguous")
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"layer must be an int, got {type(layer).__name__} {layer!r}")
    if not 0 <= layer < t.shape[0]:
        raise IndexError(f"layer must lie in [0, {t.shape[0]}) (kv_cache has {t.shape[0]} layers), got {layer}")
    return t


def value_checks(check: Optional[bool], device: torch.device) -> bool:
    """Whether to validate tensor values: by default on the CPU in plain eager mode (a value
    check would break a torch.compile graph, and fake tensors have no values), on other devices
    only on request."""
    if check is None:
        return device.type == "cpu" and not torch.compiler.is_compiling() and not _registry.tracing_modes_active()
    return bool(check)


def host_array(t: torch.Tensor) -> np.ndarray:
    """A numpy view (CPU) or host copy (other devices) of a small index tensor, for value
    checks: numpy reductions on a few dozen values cost far less than torch ops."""
    return t.detach().cpu().numpy()


def plan_fits(q: torch.Tensor, kv_cache: torch.Tensor, plan) -> None:
    """The shape checks a shared-prefix kernel launcher makes before it trusts ``plan``: one
    query per row of ``q [B, H, D]``, the cache's page size and head dim, H a multiple of Hk, and
    the plan on q's device. Index values are the op's checks (``check=True``)."""
    B, H, D = q.shape
    _, _, _, S, Hk, Dk = kv_cache.shape
    if B != plan.num_queries:
        raise ValueError(f"q has {B} rows but the plan has {plan.num_queries} queries (one decode row per branch)")
    if plan.page_size != S or Dk != D or H % Hk:
        raise ValueError(
            f"plan page_size {plan.page_size} / q [B, {H}, {D}] do not fit kv_cache with S={S}, Hk={Hk}, D={Dk}"
        )
    if plan.item_pages.device != q.device:
        raise ValueError(f"the plan is on {plan.item_pages.device} but q is on {q.device}; use plan.to(q.device)")
