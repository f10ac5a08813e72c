"""Normalisation: ``rms_norm`` (Llama / Qwen2 RMSNorm)."""

from __future__ import annotations

import torch

from ponder.ops import _checks, reference
from ponder.ops._registry import direct_call, implementation, register, register_host


@torch.library.custom_op("ponder::rms_norm", mutates_args=())
def _rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float, backend: str) -> torch.Tensor:
    return implementation("rms_norm", backend, x.device)(x, weight, eps)


@_rms_norm_op.register_fake
def _(x, weight, eps, backend):
    return torch.empty_like(x)


register("rms_norm", "torch")(reference.rms_norm)


def _rms_norm_host(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The CPU host implementation: the reference's operations in the reference's order, so the
    same bits, with the eps add, the reciprocal square root and the weight multiply done in place
    on tensors this call made (two temporaries instead of five; a small model's decode step runs
    nine of these per forward). Inputs that need a gradient, and weights of another dtype than
    x (whose product the reference rounds twice), take the reference."""
    if weight.dtype != x.dtype or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return reference.rms_norm(x, weight, eps)
    xf = x.float()
    scale = xf.pow(2).mean(-1, keepdim=True)
    scale.add_(eps).rsqrt_()
    normed = (xf * scale).to(x.dtype)
    return normed.mul_(weight)


register_host("rms_norm")(_rms_norm_host)


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
