"""``ValueHeadModule``: a scalar value in (0, 1) read from the policy's final hidden state."""

from __future__ import annotations

import torch
from torch import nn

from ponder import ops


class ValueHeadModule(nn.Module):
    """``value = sigmoid(w · rmsnorm(h) + b)`` with its own RMSNorm weight.

    Parameters (safetensors keys under ``value_head.``): ``norm_weight [C]``, ``weight [C]``,
    ``bias [1]``. A fresh head has unit norm weight and zero projection, so it answers 0.5 for
    every state until trained or loaded.
    """

    def __init__(self, hidden_size: int, eps: float, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size <= 0:
            raise ValueError(f"hidden_size must be a positive int, got {hidden_size!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.hidden_size = hidden_size
        self.eps = float(eps)
        self.norm_weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype, device=device))
        self.weight = nn.Parameter(torch.zeros(hidden_size, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(1, dtype=dtype, device=device))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden ``[B, C]`` (the model's dtype) -> values ``[B]`` fp32."""
        if not isinstance(hidden, torch.Tensor) or hidden.dim() != 2 or hidden.shape[1] != self.hidden_size:
            shape = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
            raise ValueError(f"hidden must have shape [B, {self.hidden_size}], got {shape}")
        normed = ops.rms_norm(hidden, self.norm_weight.to(hidden.dtype), self.eps)  # [B, C]
        # The projection is one dot product per row: doing it in fp32 costs nothing and keeps a
        # bf16 trunk from quantising the value. A per-row product and sum, not a matrix-vector
        # product: BLAS gemv may split the sum differently for different B, and a row's value
        # must not depend on the rows scored with it.
        score = (normed.float() * self.weight.float()).sum(dim=-1) + self.bias.float()  # [B]
        return torch.sigmoid(score)
