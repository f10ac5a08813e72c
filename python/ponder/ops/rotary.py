"""Rotary position embedding: ``rotary`` (apply) and ``rope_cache`` (precompute cos / sin)."""

from __future__ import annotations

import math
from typing import Mapping, Optional, Tuple

import torch

from ponder.ops import _checks, reference
from ponder.ops._registry import direct_call, implementation, register, register_host

try:
    from ponder import _core
except ImportError:  # the pure-Python parts still work without the extension
    _core = None

_SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
# Keys of a transformers rope_parameters / rope_scaling dict that carry no scaling information
# for the supported types (or that rope_cache's own arguments already provide).
_IGNORED_KEYS = ("rope_type", "type", "rope_theta", "partial_rotary_factor")


def _inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    # Same expression and dtype sequence as transformers, so the frequencies agree bit for bit.
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).to(dtype=torch.float) / head_dim))


def _scaling_param(scaling: Mapping, name: str, rope_type: str) -> float:
    if name not in scaling:
        raise ValueError(f"scaling of rope_type {rope_type!r} needs the parameter {name!r}, got keys {sorted(scaling)}")
    value = scaling[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"scaling[{name!r}] must be a positive number, got {value!r}")
    return float(value)


def _scaled_inv_freq(inv_freq: torch.Tensor, scaling: Mapping, theta: float) -> torch.Tensor:
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in _SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"scaling rope_type {rope_type!r} is not supported; supported are {_SUPPORTED_ROPE_TYPES} "
            "('dynamic' rescales with the running sequence length, which a fixed cache cannot express)"
        )
    if "rope_theta" in scaling and float(scaling["rope_theta"]) != float(theta):
        raise ValueError(f"scaling['rope_theta'] = {scaling['rope_theta']!r} disagrees with theta = {theta!r}")
    prf = scaling.get("partial_rotary_factor", 1.0)
    if float(prf) != 1.0:
        raise ValueError(f"scaling['partial_rotary_factor'] = {prf!r} is not supported, expected 1.0")
    if rope_type == "default":
        return inv_freq
    factor = _scaling_param(scaling, "factor", rope_type)
    if rope_type == "linear":
        return inv_freq / factor
    low = _scaling_param(scaling, "low_freq_factor", rope_type)
    high = _scaling_param(scaling, "high_freq_factor", rope_type)
    old_ctx = _scaling_param(scaling, "original_max_position_embeddings", rope_type)
    if not high > low:
        raise ValueError(f"scaling['high_freq_factor'] = {high} must exceed scaling['low_freq_factor'] = {low}")
    # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between
    # them interpolated smoothly (same formula and operation order as transformers).
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_ctx / high) * ~(wavelen > old_ctx / low)
    return torch.where(medium, smoothed, scaled)


def rope_cache(head_dim: int, max_pos: int, theta: float, scaling: Optional[Mapping] = None) -> torch.Tensor:
    """Cos / sin table for ``rotary``: ``[max_pos, head_dim]`` float32 on the CPU.

    Row p holds ``cos(p * f_i)`` for the head_dim/2 frequencies f_i in its first half and
    ``sin(p * f_i)`` in its second half, with ``f_i = theta ** (-2i / head_dim)`` rescaled by
    ``scaling``: a transformers ``config.rope_scaling`` / ``config.rope_parameters`` dict with
    ``rope_type`` (or legacy ``type``) ``"default"``, ``"linear"`` (``factor``) or ``"llama3"``
    (``factor``, ``low_freq_factor``, ``high_freq_factor``, ``original_max_position_embeddings``).
    Other types (``"dynamic"``, ``"yarn"``, ...) are refused with ValueError.

    Example (head_dim=4, theta=10000): f = [1, 0.01]; row 2 = [cos 2, cos 0.02, sin 2, sin 0.02].
    """
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even int, got {head_dim!r}")
    if isinstance(max_pos, bool) or not isinstance(max_pos, int) or max_pos <= 0:
        raise ValueError(f"max_pos must be a positive int, got {max_pos!r}")
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 1:
        raise ValueError(f"theta must be a number greater than 1, got {theta!r}")
    if scaling is not None and not isinstance(scaling, Mapping):
        raise TypeError(f"scaling must be None or a dict like config.rope_scaling, got {type(scaling).__name__}")
    inv_freq = _inv_freq(head_dim, theta)
    if scaling is not None:
        inv_freq = _scaled_inv_freq(inv_freq, scaling, theta)
    freqs = torch.arange(max_pos, dtype=torch.int64).float()[:, None] * inv_freq[None, :]  # [max_pos, D/2]
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1)


@torch.library.custom_op("ponder::rotary", mutates_args=())
def _rotary_op(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor, backend: str
) -> Tuple[torch.Tensor, torch.Tensor]:
    return implementation("rotary", backend, q.device)(q, k, positions, cos_sin)


@_rotary_op.register_fake
def _(q, k, positions, cos_sin, backend):
    return torch.empty_like(q), torch.empty_like(k)


register("rotary", "torch")(reference.rotary)


def _dense_rows(x: torch.Tensor) -> bool:
    """Heads and head dims dense, rows any distance apart (a view into a fused qkv row)."""
    return x.stride(2) == 1 and x.stride(1) == x.shape[2] and x.stride(0) >= x.shape[1] * x.shape[2]


def _rotary_host(q, k, positions, cos_sin) -> Tuple[torch.Tensor, torch.Tensor]:
    """``ponder._core.rotary_cpu`` for fp32 CPU tensors, bit for bit the reference; other dtypes
    and layouts run the reference."""
    if q.dtype != torch.float32 or not (_dense_rows(q) and _dense_rows(k)):
        return reference.rotary(q, k, positions, cos_sin)
    T, H, D = q.shape
    pos, table = positions.contiguous(), cos_sin.contiguous()
    q_out = torch.empty(q.shape, dtype=q.dtype)
    k_out = torch.empty(k.shape, dtype=k.dtype)
    _core.rotary_cpu(q.data_ptr(), q.stride(0), k.data_ptr(), k.stride(0), T, H, k.shape[1], D, pos.data_ptr(),
                     table.data_ptr(), table.shape[0], q_out.data_ptr(), k_out.data_ptr())
    return q_out, k_out


if _core is not None and hasattr(_core, "rotary_cpu"):
    register_host("rotary")(_rotary_host)


def rotary(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    backend: str = "auto",
    *,
    check: Optional[bool] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Apply rotary position embedding to queries and keys (transformers' rotate_half convention).

    q: ``[T, H, D]`` and k: ``[T, Hk, D]``, float32 / bfloat16 / float16, same dtype.
    positions: ``[T]`` int64, the position of each row, in ``[0, max_pos)``.
    cos_sin: ``[max_pos, D]`` float32 from ``rope_cache`` (cos in the first half, sin in the
    second), same device.
    check: validate position values (a device sync). Default: on CPU tensors only.

    Returns new ``(q_rot, k_rot)`` with q's and k's shapes and dtype; with ``x = [x1, x2]`` split
    in halves and c, s the halves of ``cos_sin[pos]`` cast to x's dtype:
    ``x_rot = [x1 * c - x2 * s, x2 * c + x1 * s]`` (equal to transformers'
    ``apply_rotary_pos_emb`` bit for bit).
    """
    _checks.tensor("q", q, 3, _checks.FLOAT_DTYPES, "[T, H, D] float")
    _checks.tensor("k", k, 3, _checks.FLOAT_DTYPES, "[T, Hk, D] float")
    if k.dtype != q.dtype:
        raise TypeError(f"k has dtype {k.dtype} but q has {q.dtype}; they must match")
    T, _, D = q.shape
    if D % 2:
        raise ValueError(f"head dim D of q must be even for rotary embedding, got {D}")
    _checks.dim_size("k", k, 0, T, "T, the rows of q")
    _checks.dim_size("k", k, 2, D, "D, q's head dim")
    _checks.tensor("positions", positions, 1, (torch.int64,), "1-D int64 [T]")
    _checks.dim_size("positions", positions, 0, T, "T, the rows of q")
    _checks.tensor("cos_sin", cos_sin, 2, (torch.float32,), "[max_pos, D] float32")
    _checks.dim_size("cos_sin", cos_sin, 1, D, "D, q's head dim")
    _checks.same_device("q", q, k=k, positions=positions, cos_sin=cos_sin)
    if _checks.value_checks(check, q.device) and T:
        pos = _checks.host_array(positions)
        lo, hi = int(pos.min()), int(pos.max())
        if lo < 0 or hi >= cos_sin.shape[0]:
            raise IndexError(
                f"positions must lie in [0, {cos_sin.shape[0]}) (the rows of cos_sin), got values in [{lo}, {hi}]"
            )
    if T == 0:
        return torch.empty_like(q), torch.empty_like(k)
    if direct_call(q, k, positions, cos_sin):
        return implementation("rotary", backend, q.device)(q, k, positions, cos_sin)
    return _rotary_op(q, k, positions, cos_sin, backend)
