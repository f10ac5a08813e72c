"""Token sampling: ``sample`` (greedy / temperature / top-k / top-p, reproducible per row key)."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from ponder.ops import _checks, reference
from ponder.ops._registry import direct_call, implementation, register, register_host
from ponder.ops._threads import native_threads

try:
    from ponder import _core
except ImportError:  # a source checkout without the extension: the reference serves the CPU
    _core = None


def _check_sample(logits, keys, temperature, top_k, top_p, check, rows=None) -> None:
    _checks.tensor("logits", logits, 2, _checks.FLOAT_DTYPES, "[B, V] float" if rows is None else "[G, V] float")
    B, V = logits.shape
    what = "B, the rows of logits"
    if rows is not None:
        _checks.tensor("rows", rows, 1, (torch.int64,), "[B] int64 (the logits row of each batch row)")
        _checks.same_device("logits", logits, rows=rows)
        B, what = rows.shape[0], "B, the entries of rows"
    if V == 0:
        raise ValueError("logits must have at least one vocabulary entry, got V = 0")
    _checks.tensor("keys", keys, 2, (torch.int64,), "[B, 4] int64 (seed, node_id, child_index, position)")
    _checks.dim_size("keys", keys, 0, B, what)
    _checks.dim_size("keys", keys, 1, 4, "(seed, node_id, child_index, position)")
    _checks.tensor("temperature", temperature, 1, (torch.float32,), "[B] float32")
    _checks.tensor("top_k", top_k, 1, (torch.int32,), "[B] int32")
    _checks.tensor("top_p", top_p, 1, (torch.float32,), "[B] float32")
    for name, t in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p)):
        _checks.dim_size(name, t, 0, B, what)
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


def _nucleus_rows(temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor):
    """(int64 rows drawing from a nucleus set: top_p < 1 and not greedy, int64 [B] all -1) for
    the host paths' CPU columns; numpy on the tensors' memory (a handful of torch ops on a few
    hundred values cost more in dispatch than in work)."""
    t, k, p = temperature.numpy(), top_k.numpy(), top_p.numpy()
    nucleus = np.flatnonzero((p < 1.0) & ~((t <= 0) | (k == 1)))
    return torch.from_numpy(nucleus), torch.from_numpy(np.full(t.shape[0], -1, dtype=np.int64))


def _sample_host(logits, keys, temperature, top_k, top_p) -> Tuple[torch.Tensor, torch.Tensor]:
    """``ponder._core.sample_cpu`` on CPU tensors, returning exactly what ``reference.sample`` does.

    Nucleus sets hinge on the reference's float32 softmax sums (rounded as PyTorch's SIMD lanes
    add), so rows with top_p < 1 get their allowed mask from the reference's own code and the
    native draw only hashes and compares. Rows the native code defers (a Gumbel winner within
    rounding of the runner-up; NaN / inf rows) are drawn by the reference on just those rows,
    exact because each row's draw is independent of the others. Log-probabilities are the
    reference's ``log_softmax`` gathered at the tokens. Batches of at least 2**16 logits split
    their rows over ``ops._threads.native_threads()`` threads (the same draws on any count).
    """
    lf = logits.float().contiguous()  # the reference samples logits.float() too
    keys, temperature, top_k, top_p = (t.contiguous() for t in (keys, temperature, top_k, top_p))
    B, V = lf.shape
    nucleus, allowed_row = _nucleus_rows(temperature, top_k, top_p)
    allowed = None
    if nucleus.numel():
        sub = lf.index_select(0, nucleus)
        scaled = sub / temperature.index_select(0, nucleus)[:, None]
        # bool is stored as one byte holding 0 or 1: the uint8 mask the native code reads
        allowed = reference.allowed_mask(sub, scaled, top_k.index_select(0, nucleus),
                                          top_p.index_select(0, nucleus)).contiguous()
        allowed_row[nucleus] = torch.arange(nucleus.numel())
    tokens = torch.empty(B, dtype=torch.int64)
    deferred = torch.empty(B, dtype=torch.uint8)
    _core.sample_cpu(lf.data_ptr(), B, V, V, keys.data_ptr(), temperature.data_ptr(), top_k.data_ptr(),
                     top_p.data_ptr(), 0 if allowed is None else allowed.data_ptr(), allowed_row.data_ptr(),
                     tokens.data_ptr(), deferred.data_ptr(), native_threads())
    rows = torch.from_numpy(np.flatnonzero(deferred.numpy()))
    if rows.numel():
        args = (t.index_select(0, rows) for t in (lf, keys, temperature, top_k, top_p))
        tokens[rows] = reference.sample(*args)[0]
    logprobs = torch.log_softmax(lf, dim=-1).gather(1, tokens[:, None]).squeeze(1)
    return tokens, logprobs


if _core is not None and hasattr(_core, "sample_cpu"):
    register_host("sample")(_sample_host)


def _sample_shared_host(logits, rows, keys, temperature, top_k, top_p) -> Tuple[torch.Tensor, torch.Tensor]:
    """``_sample_host(logits[rows], ...)`` without gathering the rows: the native draw reads
    each row's logits in place, and the log-softmax is taken once per logits row (PyTorch's
    ``log_softmax`` treats every row on its own, so the values are those of the gathered batch)."""
    lf = logits.float().contiguous()
    rows, keys, temperature, top_k, top_p = (t.contiguous() for t in (rows, keys, temperature, top_k, top_p))
    B, (G, V) = rows.shape[0], lf.shape
    nucleus, allowed_row = _nucleus_rows(temperature, top_k, top_p)
    allowed = None
    if nucleus.numel():
        sub = lf.index_select(0, rows.index_select(0, nucleus))
        scaled = sub / temperature.index_select(0, nucleus)[:, None]
        allowed = reference.allowed_mask(sub, scaled, top_k.index_select(0, nucleus),
                                          top_p.index_select(0, nucleus)).contiguous()
        allowed_row[nucleus] = torch.arange(nucleus.numel())
    tokens = torch.empty(B, dtype=torch.int64)
    deferred = torch.empty(B, dtype=torch.uint8)
    _core.sample_cpu(lf.data_ptr(), B, V, V, keys.data_ptr(), temperature.data_ptr(), top_k.data_ptr(),
                     top_p.data_ptr(), 0 if allowed is None else allowed.data_ptr(), allowed_row.data_ptr(),
                     tokens.data_ptr(), deferred.data_ptr(), native_threads(), rows.data_ptr(), G)
    late = torch.from_numpy(np.flatnonzero(deferred.numpy()))
    if late.numel():
        args = (t.index_select(0, late) for t in (keys, temperature, top_k, top_p))
        tokens[late] = reference.sample(lf.index_select(0, rows.index_select(0, late)), *args)[0]
    logprobs = torch.log_softmax(lf, dim=-1)[rows, tokens]
    return tokens, logprobs


def sample_shared(
    logits: torch.Tensor,
    rows: torch.Tensor,
    keys: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    backend: str = "auto",
    *,
    check: Optional[bool] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`sample` for a batch whose rows share logits: row b draws from ``logits[rows[b]]``.

    logits: ``[G, V]``; rows: ``[B]`` int64 in ``[0, G)``; keys, temperature, top_k, top_p as in
    :func:`sample`, one per batch row. Returns exactly ``sample(logits[rows], keys, ...)``: the
    same tokens and log-probabilities. On CPU tensors with the native sampler (``backend="auto"``)
    the rows are not gathered and each logits row's log-softmax is computed once, which is what
    identical decode rows (``Engine(dedup_rows=True)``) save; elsewhere the rows are gathered and
    :func:`sample` runs.
    """
    _check_sample(logits, keys, temperature, top_k, top_p, check, rows=rows)
    if _checks.value_checks(check, rows.device) and rows.numel():
        r = _checks.host_array(rows)
        bad = np.flatnonzero((r < 0) | (r >= logits.shape[0]))
        if bad.size:
            raise ValueError(f"rows[{bad[0]}] = {r[bad[0]]} must lie in [0, {logits.shape[0]}) (the rows of logits)")
    if rows.shape[0] == 0:
        return logits.new_empty(0, dtype=torch.int64), logits.new_empty(0, dtype=torch.float32)
    if implementation("sample", backend, logits.device) is _sample_host and direct_call(
            logits, rows, keys, temperature, top_k, top_p):
        return _sample_shared_host(logits, rows, keys, temperature, top_k, top_p)
    return sample(logits.index_select(0, rows), keys, temperature, top_k, top_p, backend, check=False)


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

    Implementations: ``backend="torch"`` is ``reference.sample``. ``"auto"`` on CPU tensors runs
    ``ponder._core.sample_cpu`` when the extension has it (see ``_registry``), with identical
    results: the same tokens bit for bit (a row whose Gumbel winner is within rounding distance
    of the runner-up is handed to the reference) and the same log-probabilities (the
    reference's ``log_softmax``, gathered).
    """
    _check_sample(logits, keys, temperature, top_k, top_p, check)
    if logits.shape[0] == 0:
        return logits.new_empty(0, dtype=torch.int64), logits.new_empty(0, dtype=torch.float32)
    if direct_call(logits, keys, temperature, top_k, top_p):
        return implementation("sample", backend, logits.device)(logits, keys, temperature, top_k, top_p)
    return _sample_op(logits, keys, temperature, top_k, top_p, backend)
