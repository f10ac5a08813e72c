"""Normalisation: ``rms_norm`` (Llama / Qwen2 RMSNorm)."""

from __future__ import annotations

import torch

from ponder.ops import _checks, reference
from ponder.ops._registry import direct_call, implementation, register


@torch.library.custom_op("ponder::rms_norm", mutates_args=())
def _rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float, backend: str) -> torch.Tensor:
    return implementation("rms_norm", backend, x.device)(x, weight, eps)


@_rms_norm_op.register_fake
def _(x, weight, eps, backend):
    return torch.empty_like(x)


register("rms_norm", "torch")(reference.rms_norm)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, backend: str = "auto") -> torch.Tensor:
    """RMS normalisation over the last axis, exactly like transformers' ``LlamaRMSNorm``.

    x: ``[..., C]`` float32 / bfloat16 / float16 (at least 1-D).
    weight: ``[C]`` float, same device; usually x's dtype.
    eps: added to the mean square before the reciprocal square root (config.rms_norm_eps).

    Returns x's shape and dtype: ``weight * (x / sqrt(mean(x**2) + eps))`` with the normalisation
    done in fp32 and cast back to x's dtype before the weight multiply (the rounding
    transformers applies, so bf16 results match it bit for bit).
    """
    _checks.tensor("x", x, None, _checks.FLOAT_DTYPES, "[..., C] float")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension [..., C], got a 0-d tensor")
    _checks.tensor("weight", weight, 1, _checks.FLOAT_DTYPES, "[C] float")
    _checks.dim_size("weight", weight, 0, x.shape[-1], "C, the last dimension of x")
    _checks.same_device("x", x, weight=weight)
    if isinstance(eps, bool) or not isinstance(eps, (float, int)) or not eps >= 0:
        raise ValueError(f"eps must be a non-negative float, got {eps!r}")
    if direct_call(x, weight):
        return implementation("rms_norm", backend, x.device)(x, weight, float(eps))
    return _rms_norm_op(x, weight, float(eps), backend)
