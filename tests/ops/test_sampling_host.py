"""The native CPU implementation of ops.sample (ponder._core.sample_cpu) against the reference:
identical tokens and log-probabilities for every parameter combination, and its selection."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import ponder.ops as ops
from ponder.ops import _registry, reference, sampling

_core = pytest.importorskip("ponder._core")
pytestmark = pytest.mark.skipif(not hasattr(_core, "sample_cpu"), reason="extension built without sample_cpu")


def _both(logits, keys, temperature, top_k, top_p):
    native = ops.sample(logits, keys, temperature, top_k, top_p)
    expected = ops.sample(logits, keys, temperature, top_k, top_p, backend="torch")
    assert torch.equal(native[0], expected[0]), (native[0], expected[0])
    # the same log_softmax gathered at the same tokens: bit-identical, no tolerance
    torch.testing.assert_close(native[1], expected[1], atol=0, rtol=0, equal_nan=True)
    return native


def _params(B, temperature, top_k, top_p):
    return (torch.full((B,), temperature, dtype=torch.float32), torch.full((B,), top_k, dtype=torch.int32),
            torch.full((B,), top_p, dtype=torch.float32))


def _keys(B, seed=3):
    return torch.randint(-(2**62), 2**62, (B, 4), generator=torch.Generator().manual_seed(seed))


SETTINGS = [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.7, 0, 1.0), (2.5, 0, 1.0), (1.0, 1, 1.0), (0.8, 7, 1.0),
            (1.0, 0, 0.9), (0.6, 0, 0.3), (1.2, 40, 0.8), (0.0, 5, 0.5)]


@pytest.mark.parametrize("temperature,top_k,top_p", SETTINGS)
@pytest.mark.parametrize("V", [1, 2, 37, 1000, 4099])
def test_matches_reference(V, temperature, top_k, top_p):
    g = torch.Generator().manual_seed(V)
    B = 48
    logits = torch.randn(B, V, generator=g) * 3
    logits[:, : min(V, 4)] += 4  # a few strong tokens, as language models have
    _both(logits, _keys(B), *_params(B, temperature, min(top_k, V), top_p))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_have_many_exact_ties(dtype):
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(64, 301, generator=g) * 2).round().to(dtype)  # ~10 distinct values per row
    for setting in SETTINGS:
        _both(logits, _keys(64), *_params(64, *setting))


def test_constraint_masks_and_single_allowed_token():
    g = torch.Generator().manual_seed(2)
    B, V = 40, 513
    logits = torch.randn(B, V, generator=g)
    logits[:, 100:] = -math.inf  # a constraint mask allowing only the first 100 tokens
    only = torch.arange(B) % V
    logits[::2] = -math.inf
    logits[::2, 0] = 0.0
    logits[::2] = logits[::2].scatter(1, only[::2, None], 5.0)  # rows with one or two allowed tokens
    for setting in SETTINGS:
        tokens, _ = _both(logits, _keys(B), *_params(B, *setting))
        assert torch.isfinite(logits.gather(1, tokens[:, None])).all()


@pytest.mark.parametrize("V", [17, 530, 1000])
def test_chunks_of_hopeless_tokens_are_passed_over_without_losing_a_winner(V):
    """Once a runner-up is known, the native draw skips 16-token chunks whose score bounds are
    all below it. Rows here have a strong token early and one rival of about the same logit at
    a chunk edge (or in the short last chunk) after long runs of hopeless tokens; over 64 keys
    the rival wins some draws, which a skipped or misaligned chunk would lose."""
    B = 64
    edges = [p for p in (15, 16, 31, 32, 511, 512, 527, V - 8, V - 1) if 0 < p < V]
    for p in edges:
        logits = torch.full((B, V), -12.0)
        logits[:, 0] = 3.0
        logits[:, p] = 3.0 - torch.linspace(0.0, 1.0, B)  # from an even match to a clear loss
        tokens, _ = _both(logits, _keys(B, seed=p), *_params(B, 1.0, 0, 1.0))
        assert (tokens == p).any() and (tokens == 0).any(), (p, tokens)


def test_token_hashes_kept_between_calls_serve_any_vocabulary_size():
    # The token half of each draw's hash is computed once per process and vocabulary size; calls
    # with a larger vocabulary extend it and smaller ones read its prefix. Every size, in any
    # order, must draw the reference's tokens (flat logits: every token is a candidate).
    for V in (300, 20000, 7, 20000, 300, 65536):
        B = 12
        logits = torch.randn(B, V, generator=torch.Generator().manual_seed(V)) * 0.1
        _both(logits, _keys(B, seed=V), *_params(B, 1.0, 0, 1.0))


def test_degenerate_rows_are_left_to_the_reference():
    """NaN, +inf and all -inf rows follow the reference's conventions (they are deferred)."""
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(4))
    logits[0, 3] = math.nan
    logits[1, 7] = math.inf
    logits[2] = -math.inf
    for setting in SETTINGS:
        _both(logits, _keys(6), *_params(6, *setting))


def test_near_ties_are_deferred():
    """The native draw never guesses a winner within rounding of the runner-up: logits chosen
    so that tokens 0 and 1 score the same up to float rounding are deferred (and the reference,
    run on those rows, decides), while clear winners are not."""
    B, V = 64, 3
    keys, (t, k, p) = _keys(B), _params(B, 1.0, 0, 1.0)
    noise = -reference.sampling_uniforms(keys, V).double().log().neg().log()  # [B, V] Gumbel noise
    logits = torch.zeros(B, V)
    logits[:, 2] = -30.0
    logits[:, 1] = (noise[:, 0] - noise[:, 1]).float()  # score 1 == score 0 up to rounding
    logits[B // 2:, 1] -= 0.5  # the second half has a clear winner: token 0
    tokens = torch.empty(B, dtype=torch.int64)
    deferred = torch.empty(B, dtype=torch.uint8)
    _core.sample_cpu(logits.data_ptr(), B, V, V, keys.data_ptr(), t.data_ptr(), k.data_ptr(), p.data_ptr(), 0, 0,
                     tokens.data_ptr(), deferred.data_ptr())
    assert deferred[: B // 2].all() and not deferred[B // 2:].any()
    assert (tokens[B // 2:] == 0).all()
    _both(logits, keys, t, k, p)


@settings(max_examples=60, deadline=None)
@given(B=st.integers(1, 9), V=st.integers(1, 300), seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.5, 3.0, 20.0]),
       temperature=st.sampled_from([0.0, 0.3, 1.0, 1.7]), top_k=st.integers(0, 310),
       top_p=st.sampled_from([1.0, 0.95, 0.5, 0.05]))
def test_property_matches_reference(B, V, seed, scale, temperature, top_k, top_p):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, V, generator=g) * scale
    logits[torch.rand(B, V, generator=g) < 0.2] = -math.inf
    logits[:, 0] = logits[:, 0].clamp_min(0.0)  # at least one finite token per row
    _both(logits, _keys(B, seed), *_params(B, temperature, min(top_k, V), top_p))


def test_hash_matches_the_reference_definition():
    keys = [(0, 0, 0, 0), (1, 2, 3, 4), (2**40 + 5, 123456789, 7, 2**33 + 1), (-1, -(2**63), 2**63 - 1, 0)]
    ref_rows = reference.sampling_row_hash(torch.tensor(keys)).tolist()
    assert [_core.sampling_row_hash(*k) for k in keys] == ref_rows
    u = reference.sampling_uniforms(torch.tensor(keys), 70000)
    for b, h in enumerate(ref_rows):
        for v in (0, 1, 255, 65536, 69999):
            assert _core.sampling_uniform(h, v) == float(u[b, v])


def test_selection_auto_uses_host_torch_uses_reference(monkeypatch):
    calls = []
    monkeypatch.setitem(_registry._HOST_IMPLS, "sample", lambda *a: calls.append("host") or sampling._sample_host(*a))
    args = (torch.randn(3, 20), _keys(3)) + _params(3, 1.0, 0, 1.0)
    ops.sample(*args)
    assert calls == ["host"]
    ops.sample(*args, backend="torch")
    assert calls == ["host"]
    monkeypatch.setenv("PONDER_BACKEND", "torch")
    ops.sample(*args)
    assert calls == ["host"]
    monkeypatch.setenv("PONDER_BACKEND", "auto")
    torch.library.opcheck(torch.ops.ponder.sample.default, args + ("auto",))
    assert _registry.implementation("sample", "auto", "cpu") is _registry._HOST_IMPLS["sample"]
    assert _registry.implementation("sample", "torch", "cpu") is reference.sample


def _raw_call(B=2, V=8, top_k=0, top_p=1.0, temperature=1.0, allowed_row=None, num_threads=1):
    logits, keys = torch.randn(B, V), _keys(B)
    t, k, p = _params(B, temperature, top_k, top_p)
    rows = torch.full((B,), -1, dtype=torch.int64) if allowed_row is None else allowed_row
    out, deferred = torch.empty(B, dtype=torch.int64), torch.empty(B, dtype=torch.uint8)
    _core.sample_cpu(logits.data_ptr(), B, V, V, keys.data_ptr(), t.data_ptr(), k.data_ptr(), p.data_ptr(), 0,
                     rows.data_ptr(), out.data_ptr(), deferred.data_ptr(), num_threads)


@pytest.mark.parametrize("over,match", [
    (dict(top_k=9), r"top_k\[0\] = 9 must lie in \[0, 8\]"),
    (dict(top_p=0.0), r"top_p\[0\] = 0 must lie in \(0, 1\]"),
    (dict(temperature=-1.0), r"temperature\[0\] = -1 must be a finite value >= 0"),
    (dict(top_p=0.5), "has top_p = 0.5 but no allowed mask"),
    (dict(allowed_row=torch.tensor([0, -1])), r"allowed_row\[0\] = 0 must be -1 or the next mask row"),
    (dict(num_threads=0), "num_threads must be >= 1, got 0"),
])
def test_native_entry_point_rejects_bad_arguments(over, match):
    with pytest.raises(ValueError, match=match):
        _raw_call(**over)


def _native_draw(logits, keys, temperature, top_k, top_p, allowed, allowed_row, num_threads):
    B, V = logits.shape
    tokens = torch.full((B,), -7, dtype=torch.int64)
    deferred = torch.full((B,), 9, dtype=torch.uint8)
    _core.sample_cpu(logits.data_ptr(), B, V, V, keys.data_ptr(), temperature.data_ptr(), top_k.data_ptr(),
                     top_p.data_ptr(), allowed.data_ptr(), allowed_row.data_ptr(), tokens.data_ptr(),
                     deferred.data_ptr(), num_threads)
    return tokens, deferred


@pytest.mark.parametrize("B,V", [(300, 517), (7, 20000), (2, 70000)])
def test_threads_share_rows_out_without_changing_a_draw(B, V):
    """Large calls split their rows over threads; every row's token and deferral stay the same
    as on one thread. The batch mixes greedy, top-k, masked (nucleus) rows, near-flat rows and
    NaN rows (deferred), and one thread count above the row count."""
    g = torch.Generator().manual_seed(B)
    logits = torch.randn(B, V, generator=g) * torch.rand(B, 1, generator=g) * 4
    logits[::11, 0] = float("nan")
    temperature = torch.rand(B, generator=g) * 2
    temperature[::5] = 0.0
    top_k = torch.where(torch.arange(B) % 3 == 0, 13, 0).to(torch.int32)
    top_p = torch.ones(B)
    allowed_row = torch.full((B,), -1, dtype=torch.int64)
    masked = torch.arange(B)[(torch.arange(B) % 4 == 1) & (temperature > 0)]
    allowed_row[masked] = torch.arange(masked.numel())
    top_p[masked] = 0.9
    allowed = (torch.rand(max(masked.numel(), 1), V, generator=g) < 0.3).to(torch.uint8).contiguous()
    args = (logits, _keys(B), temperature, top_k, top_p, allowed, allowed_row)
    one = _native_draw(*args, 1)
    assert (one[1] == 0).any() and (one[1] == 1).any()  # both outcomes occur, so both are compared
    for threads in (2, 3, B + 5):
        many = _native_draw(*args, threads)
        assert torch.equal(many[1], one[1])
        kept = one[1] == 0
        assert torch.equal(many[0][kept], one[0][kept])


# ---------------------------------------------------------------- rows that share logits rows
def _shared_case(G, B, V, seed):
    """G logits rows (one NaN row, one near-flat, the rest language-model-like) and B batch rows
    mapping onto them, with every parameter setting mixed over the batch."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(G, V, generator=g) * 3
    logits[:, : min(V, 4)] += 4
    if G > 2:
        logits[1] = float("nan")
        logits[2] *= 1e-3
    rows = torch.randint(0, G, (B,), generator=g)
    settings = [SETTINGS[i % len(SETTINGS)] for i in range(B)]
    temperature = torch.tensor([s[0] for s in settings], dtype=torch.float32)
    top_k = torch.tensor([min(s[1], V) for s in settings], dtype=torch.int32)
    top_p = torch.tensor([s[2] for s in settings], dtype=torch.float32)
    return logits, rows, _keys(B, seed), temperature, top_k, top_p


@pytest.mark.parametrize("G,B,V", [(1, 9, 37), (5, 40, 513), (12, 64, 4099), (3, 200, 700)])
def test_sample_shared_is_sample_on_the_gathered_rows(G, B, V):
    """ops.sample_shared(logits, rows, ...) gives exactly ops.sample(logits[rows], ...): the
    same tokens and log-probabilities, for greedy, top-k, nucleus, NaN (deferred) and near-flat
    rows, natively and through the reference."""
    logits, rows, keys, t, k, p = _shared_case(G, B, V, seed=G * 1000 + B)
    expected = ops.sample(logits[rows], keys, t, k, p)
    for backend in ("auto", "torch"):
        got = ops.sample_shared(logits, rows, keys, t, k, p, backend=backend)
        assert torch.equal(got[0], expected[0])
        torch.testing.assert_close(got[1], expected[1], atol=0, rtol=0, equal_nan=True)


def test_sample_shared_host_path_reads_rows_in_place(monkeypatch):
    """On CPU tensors the native sampler reads each row's logits through its index: the rows
    are never gathered (index_select of the whole logits rows would show in the count)."""
    logits, rows, keys, t, k, p = _shared_case(4, 32, 300, seed=5)
    t[:] = 1.0
    k[:] = 0
    p[:] = 1.0
    calls = []
    real = _core.sample_cpu
    monkeypatch.setattr(_core, "sample_cpu", lambda *a, **kw: (calls.append(a), real(*a, **kw))[1])
    got = ops.sample_shared(logits, rows, keys, t, k, p)
    assert len(calls) == 1 and calls[0][-1] == 4 and calls[0][1] == 32  # 32 rows over 4 logits rows
    expected = ops.sample(logits[rows], keys, t, k, p, backend="torch")
    assert torch.equal(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1], atol=0, rtol=0, equal_nan=True)  # row 1 is NaN


def test_sample_shared_refuses_bad_rows():
    logits, rows, keys, t, k, p = _shared_case(3, 6, 50, seed=6)
    with pytest.raises(ValueError, match=r"rows\[2\] = 3 must lie in \[0, 3\)"):
        ops.sample_shared(logits, torch.tensor([0, 1, 3, 0, 0, 0]), keys, t, k, p)
    with pytest.raises(ValueError, match=r"rows\[0\] = -1"):
        ops.sample_shared(logits, torch.tensor([-1, 1, 2, 0, 0, 0]), keys, t, k, p)
    with pytest.raises(TypeError, match="rows must be"):
        ops.sample_shared(logits, rows.to(torch.int32), keys, t, k, p)
    with pytest.raises(ValueError, match="the entries of rows"):
        ops.sample_shared(logits, rows[:5], keys, t, k, p)
    # without value checks the native sampler still refuses the index, before writing anything
    with pytest.raises(ValueError, match=r"logit_rows\[2\] = 3 must lie in \[0, 3\)"):
        ops.sample_shared(logits, torch.tensor([0, 1, 3, 0, 0, 0]), keys, t, k, p, check=False)
