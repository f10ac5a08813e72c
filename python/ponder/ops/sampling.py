"""Token sampling: ``sample`` (greedy / temperature / top-k / top-p, reproducible per row key)."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from ponder.ops import _checks, reference
from ponder.ops._registry import direct_call, implementation, register


def _check_sample(logits, keys, temperature, top_k, top_p, check) -> None:
    _checks.tensor("logits", logits, 2, _checks.FLOAT_DTYPES, "[B, V] float")
    B, V = logits.shape
    if V == 0:
        raise ValueError("logits must have at least one vocabulary entry, got V = 0")
    _checks.tensor("keys", keys, 2, (torch.int64,), "[B, 4] int64 (seed, node_id, child_index, position)")
    _checks.dim_size("keys", keys, 0, B, "B, the rows of logits")
    _checks.dim_size("keys", keys, 1, 4, "(seed, node_id, child_index, position)")
    _checks.tensor("temperature", temperature, 1, (torch.float32,), "[B] float32")
    _checks.tensor("top_k", top_k, 1, (torch.int32,), "[B] int32")
    _checks.tensor("top_p", top_p, 1, (torch.float32,), "[B] float32")
    for name, t in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p)):
        _checks.dim_size(name, t, 0, B, "B, the rows of logits")
    _checks.same_device("logits", logits, keys=keys, temperature=temperature, top_k=top_k, top_p=top_p)
    if not _checks.value_checks(check, logits.device) or B == 0:
        return
    temp, k, p = (_checks.host_array(t) for t in (temperature, top_k, top_p))
    bad = np.flatnonzero(~(temp >= 0) | ~np.isfinite(temp))
    if bad.size:
        raise ValueError(f"temperature[{bad[0]}] = {temp[bad[0]]} must be a finite value >= 0 (0 = greedy)")
    bad = np.flatnonzero((k < 0) | (k > V))
    if bad.size:
        raise ValueError(f"top_k[{bad[0]}] = {k[bad[0]]} must lie in [0, {V}] (0 = off, V = vocabulary size)")
    bad = np.flatnonzero(~(p > 0) | ~(p <= 1))
    if bad.size:
        raise ValueError(f"top_p[{bad[0]}] = {p[bad[0]]} must lie in (0, 1] (1 = off)")


@torch.library.custom_op("ponder::sample", mutates_args=())
def _sample_op(
    logits: torch.Tensor,
    keys: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    backend: str,
) -> Tuple[torch.Tensor, torch.Tensor]:
    return implementation("sample", backend, logits.device)(logits, keys, temperature, top_k, top_p)


@_sample_op.register_fake
def _(logits, keys, temperature, top_k, top_p, backend):
    B = logits.shape[0]
    return logits.new_empty(B, dtype=torch.int64), logits.new_empty(B, dtype=torch.float32)


register("sample", "torch")(reference.sample)


def sample(
    logits: torch.Tensor,
    keys: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    backend: str = "auto",
    *,
    check: Optional[bool] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row, reproducibly: a row's token depends only on its key and logits.

    logits: ``[B, V]`` float32 / bfloat16 / float16.
    keys: ``[B, 4]`` int64, one ``(seed, node_id, child_index, position)`` per row.
    temperature: ``[B]`` float32, >= 0; 0 = greedy.
    top_k: ``[B]`` int32 in ``[0, V]``; 0 = off (V is off too); 1 = greedy.
    top_p: ``[B]`` float32 in ``(0, 1]``; 1.0 = off.
    check: validate temperature / top_k / top_p values (a device sync). Default: on CPU only.

    Returns ``tokens [B]`` int64 and ``logprobs [B]`` float32, where logprob is
    ``log_softmax(logits.float())[token]`` of the RAW model distribution (before temperature,
    top-k and top-p), the quantity search scores and training targets need.

    Definition, per row with ``z = logits.float()``:

    - greedy rows (temperature 0 or top_k 1): ``argmax z``, ties to the lowest token id;
    - otherwise the allowed set is the top-k set ``{v : z[v] >= k-th largest z}`` (ties at the
      boundary all kept), then within it the nucleus of ``p = softmax(z / temperature)``: sort p
      descending, keep entries while the mass before them is < top_p (at least one), and allow
      every token whose p is >= the smallest kept p;
    - the token is ``argmax over allowed v of z[v] / temperature - log(-log(u[v]))`` (Gumbel-max,
      an exact draw from the renormalised softmax), with ``u`` from
      ``reference.sampling_uniforms(keys, V)``: a counter-based 32-bit integer hash of
      ``(seed, node_id, child_index, position, v)`` mapped exactly to an odd multiple of 2**-24.
    """
    _check_sample(logits, keys, temperature, top_k, top_p, check)
    if logits.shape[0] == 0:
        return logits.new_empty(0, dtype=torch.int64), logits.new_empty(0, dtype=torch.float32)
    if direct_call(logits, keys, temperature, top_k, top_p):
        return implementation("sample", backend, logits.device)(logits, keys, temperature, top_k, top_p)
    return _sample_op(logits, keys, temperature, top_k, top_p, backend)
