"""Fused step scoring: ``value_score`` (value head or token-pair PRM readout + path aggregation)."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from ponder.ops import _checks, reference
from ponder.ops._registry import direct_call, implementation, register

MODES = ("last", "min", "prod", "mean")


def _check_value_score(hidden, rows, norm_weight, eps, direction, bias, parent_score, depth, mode, check) -> None:
    _checks.tensor("hidden", hidden, 2, _checks.FLOAT_DTYPES, "[N, C] float")
    N, C = hidden.shape
    _checks.tensor("rows", rows, 1, (torch.int64,), "[M] int64")
    M = rows.shape[0]
    if norm_weight is not None:
        _checks.tensor("norm_weight", norm_weight, 1, _checks.FLOAT_DTYPES, "[C] float")
        _checks.dim_size("norm_weight", norm_weight, 0, C, "C, the hidden size")
    _checks.tensor("direction", direction, 1, _checks.FLOAT_DTYPES, "[C] float")
    _checks.dim_size("direction", direction, 0, C, "C, the hidden size")
    _checks.tensor("parent_score", parent_score, 1, (torch.float32,), "[M] float32")
    _checks.dim_size("parent_score", parent_score, 0, M, "M, the length of rows")
    _checks.tensor("depth", depth, 1, (torch.int32,), "[M] int32")
    _checks.dim_size("depth", depth, 0, M, "M, the length of rows")
    others = {"rows": rows, "direction": direction, "parent_score": parent_score, "depth": depth}
    if norm_weight is not None:
        others["norm_weight"] = norm_weight
    _checks.same_device("hidden", hidden, **others)
    for name, value in (("eps", eps), ("bias", bias)):
        if isinstance(value, bool) or not isinstance(value, (float, int)):
            raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be a non-negative float, got {eps!r}")
    if not math.isfinite(bias):  # a NaN bias turns every score into NaN
        raise ValueError(f"bias must be a finite float, got {bias!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not _checks.value_checks(check, hidden.device) or M == 0:
        return
    lo, hi = int(rows.min()), int(rows.max())
    if lo < 0 or hi >= N:
        raise IndexError(f"rows must lie in [0, {N}) (the rows of hidden), got values in [{lo}, {hi}]")
    if int(depth.min()) < 1:
        raise ValueError(f"depth must be >= 1 (steps on the path including this one), got minimum {int(depth.min())}")


@torch.library.custom_op("ponder::value_score", mutates_args=())
def _value_score_op(
    hidden: torch.Tensor,
    rows: torch.Tensor,
    norm_weight: Optional[torch.Tensor],
    eps: float,
    direction: torch.Tensor,
    bias: float,
    parent_score: torch.Tensor,
    depth: torch.Tensor,
    mode: str,
    backend: str,
) -> Tuple[torch.Tensor, torch.Tensor]:
    impl = implementation("value_score", backend, hidden.device)
    return impl(hidden, rows, norm_weight, eps, direction, bias, parent_score, depth, mode)


@_value_score_op.register_fake
def _(hidden, rows, norm_weight, eps, direction, bias, parent_score, depth, mode, backend):
    M = rows.shape[0]
    return hidden.new_empty(M, dtype=torch.float32), hidden.new_empty(M, dtype=torch.float32)


register("value_score", "torch")(reference.value_score)


def value_score(
    hidden: torch.Tensor,
    rows: torch.Tensor,
    norm_weight: Optional[torch.Tensor],
    eps: float,
    direction: torch.Tensor,
    bias: float,
    parent_score: torch.Tensor,
    depth: torch.Tensor,
    mode: str = "last",
    backend: str = "auto",
    *,
    check: Optional[bool] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Score M finished steps from their last hidden states and aggregate along their paths.

    hidden: ``[N, C]`` float32 / bfloat16 / float16, e.g. the final hidden states of a forward.
    rows: ``[M]`` int64 in ``[0, N)``; ``hidden[rows[m]]`` is step m's step-end state.
    norm_weight: ``[C]`` float or None; when given, the state is first normalised exactly like
    ``rms_norm(h, norm_weight, eps)`` (fp32 statistics, cast to hidden's dtype, then scaled).
    eps: the RMSNorm epsilon (ignored without norm_weight).
    direction: ``[C]`` float: a value head ``w``, or for a token-pair PRM ``W[good] - W[bad]``
    (rows of the LM head), so ``sigmoid`` of the dot is ``softmax(logits[[good, bad]])[0]``.
    bias: added to the dot (value head ``b``; 0 for a PRM).
    parent_score: ``[M]`` float32, the parent's aggregated path score.
    depth: ``[M]`` int32 >= 1, scored steps on the path including this one; at depth 1 the
    parent's score is ignored.
    mode: how step scores combine along a path: ``"last"`` (this step's score), ``"min"``,
    ``"prod"``, or ``"mean"`` (parent_score is the mean of the depth - 1 earlier steps).
    check: validate rows / depth values (a device sync). Default: on CPU tensors only.

    Returns ``(score [M], path_score [M])`` float32, with
    ``score = sigmoid(dot(float(norm(h)), float(direction)) + bias)`` and, for depth > 1,
    ``path_score = score | min(parent, score) | parent * score | (parent * (depth - 1) + score) / depth``.

    Example (mode "mean")::

        parent_score = [0.5, 0.9], depth = [3, 1], score = [0.8, 0.4]
        ->  path_score = [(0.5 * 2 + 0.8) / 3, 0.4] = [0.6, 0.4]
    """
    _check_value_score(hidden, rows, norm_weight, eps, direction, bias, parent_score, depth, mode, check)
    if rows.shape[0] == 0:
        empty = hidden.new_empty(0, dtype=torch.float32)
        return empty, empty.clone()
    args = (hidden, rows, norm_weight, float(eps), direction, float(bias), parent_score, depth, mode)
    tensors = [t for t in (hidden, rows, norm_weight, direction, parent_score, depth) if t is not None]
    if direct_call(*tensors):
        return implementation("value_score", backend, hidden.device)(*args)
    return _value_score_op(*args, backend)
