"""ops.linear's small-matrix path: ``linear_blocked_cpu`` against its PyTorch reference (a fused
multiply-add chain in blocks), the BLAS order it is matched to, and the rows it serves in
``_blas_rows`` (RowRoute's and the LM head's products of small matrices on few rows)."""

import gc

import pytest
import torch
import torch.nn.functional as F

from ponder.ops import linear as lin
from ponder.ops import reference

core = lin._core
pytestmark = pytest.mark.skipif(core is None or not hasattr(core, "linear_blocked_cpu"),
                                reason="ponder._core has no linear_blocked_cpu")


def _bits(t):
    return t.contiguous().view(torch.int32)


def _run(x, wt, N, bias, bias_first, block, scalar=False, out_stride=None):
    """wt: rows ``[K, stride]`` or strips ``[strips, K + extra, 16]`` (see _transposed)."""
    M, K = x.shape
    out_stride = N if out_stride is None else out_stride
    out = torch.full((M, out_stride), -7.0)
    row, strip = (wt.shape[1], 16) if wt.dim() == 2 else (16, wt.shape[1] * 16)
    core.linear_blocked_cpu(x.data_ptr(), M, K, x.stride(0) if M > 1 else K, wt.data_ptr(), N, row,
                            0 if bias is None else bias.data_ptr(), bias_first, block, out.data_ptr(), out_stride,
                            scalar, wt_strip_stride=strip)
    return out


def _transposed(w, extra=0, strips=False):
    """w [N, K] transposed: rows [K, N rounded up to 16 + extra], or strips of 16 columns
    [ceil(N / 16), K + extra, 16] (``extra`` unused rows at each strip's end)."""
    N, K = w.shape
    if strips:
        wt = torch.full((-(-N // 16), K + extra, 16), 1e30)  # padding is read (columns) or skipped (rows)
        for n in range(N):
            wt[n // 16, :K, n % 16] = w[n]
        return wt
    wt = torch.full((K, -(-N // 16) * 16 + extra), 1e30)  # padding columns are read, never used
    wt[:, :N] = w.t()
    return wt


# (M, K, N): rows off the 6-row tile, K with one and many blocks, N off the 16-column tile
SHAPES = [(1, 1, 1), (5, 17, 15), (7, 128, 16), (13, 129, 17), (6, 300, 51), (12, 5, 33)]


@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("scalar", [False, True])
@pytest.mark.parametrize("strips", [False, True], ids=["rows", "strips"])
def test_kernel_matches_the_reference_bit_for_bit(M, K, N, scalar, strips):
    g = torch.Generator().manual_seed(M * 1000 + K * 7 + N)
    wide = torch.randn(M, K + 3, generator=g)
    x = wide[:, :K]  # rows K + 3 floats apart
    w, b = torch.randn(N, K, generator=g), torch.randn(N, generator=g)
    wt = _transposed(w, extra=16 if not strips else 3, strips=strips)
    for block in sorted({1, 7, max(1, K // 2), K, K + 5}):
        for bias, bias_first in ((None, False), (b, False), (b, True)):
            out = _run(x, wt, N, bias, bias_first, block, scalar, out_stride=N + 1)
            want = reference.linear_blocked(x, w, bias, block, bias_first)
            assert torch.equal(_bits(out[:, :N]), _bits(want)), (block, bias is not None, bias_first)
            assert (out[:, N] == -7.0).all()  # nothing written past a row's N outputs


def test_vector_and_scalar_paths_agree_and_rows_do_not_depend_on_the_batch():
    g = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(40, 384, generator=g), torch.randn(70, 384, generator=g), torch.randn(70, generator=g)
    wt = _transposed(w)
    whole = _run(x, wt, 70, b, True, 192)
    assert torch.equal(_bits(whole), _bits(_run(x, wt, 70, b, True, 192, scalar=True)))
    for lo, hi in ((0, 1), (3, 5), (11, 17), (33, 40)):
        assert torch.equal(_bits(_run(x[lo:hi], wt, 70, b, True, 192)), _bits(whole[lo:hi]))
    # the same weight in strips of 16 columns: the same bits
    strips = _transposed(w, strips=True)
    assert torch.equal(_bits(_run(x, strips, 70, b, True, 192)), _bits(whole))
    assert torch.equal(_bits(_run(x, strips, 70, b, True, 192, scalar=True)), _bits(whole))


def test_cached_transposed_weight_is_in_strips():
    w = torch.randn(40, 24)
    wt, block, bias_first = lin.blocked_weight(w, False) or (None, None, None)
    if wt is None:
        pytest.skip("no BLAS order for this shape here")
    assert wt.shape == (3, 24, 16) and wt.is_contiguous()
    assert torch.equal(wt[1, :, 5], w[21]) and (wt[2, :, 8:] == 0).all()


def test_refused_arguments_write_nothing():
    x, wt = torch.randn(4, 8), torch.zeros(8, 16)
    out = torch.full((4, 5), -7.0)

    def call(**kw):
        args = dict(x=x.data_ptr(), num_rows=4, in_features=8, x_row_stride=8, wt=wt.data_ptr(), out_features=5,
                    wt_row_stride=16, bias=0, bias_first=False, block=8, out=out.data_ptr(), out_row_stride=5)
        args.update(kw)
        core.linear_blocked_cpu(**args)

    for kw, words in ((dict(num_rows=-1), "num_rows"), (dict(block=0), "block must be >= 1"),
                      (dict(x_row_stride=7), "x_row_stride must be >= in_features = 8"),
                      (dict(wt_row_stride=15), "wt_row_stride must be >= out_features rounded up"),
                      (dict(wt_row_stride=16, wt_strip_stride=127), "wt_strip_stride must be >= 16 \\* in_features"),
                      (dict(wt_row_stride=32, wt_strip_stride=256), "rows .wt_strip_stride 16. or strips"),
                      (dict(out_row_stride=4), "out_row_stride must be >= out_features = 5")):
        with pytest.raises(ValueError, match=words):
            call(**kw)
        assert (out == -7.0).all()


def test_block_rule_reproduces_f_linear():
    # whatever this CPU's BLAS does, a rule it returns gives F.linear's bits on fresh data, rows
    # 1-15 of a product of at least 16 rows, with and without a bias
    g = torch.Generator().manual_seed(5)
    found = 0
    for K, N in ((3, 5), (64, 23), (128, 51), (192, 40), (200, 64), (384, 128), (777, 33)):
        for with_bias in (False, True):
            rule = lin.blas_block_rule(K, N, with_bias)
            if rule is None:
                continue
            found += 1
            w = torch.randn(N, K, generator=g)
            b = torch.randn(N, generator=g) if with_bias else None
            x = torch.randn(32, K, generator=g)
            want = F.linear(x, w, b)
            got = _run(x[:15], _transposed(w), N, b, rule[1], rule[0])
            assert torch.equal(_bits(got), _bits(want[:15])), (K, with_bias, rule)
    if not found:
        pytest.skip("this CPU's BLAS sums in no order linear_blocked_cpu knows: products keep F.linear")


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls of linear_blocked_cpu."""
    seen = []
    real = core.linear_blocked_cpu

    def spy(*args, **kw):
        seen.append(args[1])
        return real(*args, **kw)

    monkeypatch.setattr(core, "linear_blocked_cpu", spy)
    return seen


def _needs_rule(K, N, with_bias):
    if not core.linear_blocked_cpu_fast() or lin.blas_block_rule(K, N, with_bias) is None:
        pytest.skip("no vector FMA path or no BLAS order found on this CPU")


@pytest.mark.parametrize("K,N,with_bias", [(128, 768, False), (384, 128, False), (200, 51, True), (37, 33, True)])
def test_blas_rows_of_small_matrices_take_the_kernel_with_f_linear_bits(K, N, with_bias, calls):
    _needs_rule(K, N, with_bias)
    calls.clear()  # (the rule's probe)
    g = torch.Generator().manual_seed(K + N)
    w = torch.randn(N, K, generator=g)
    b = torch.randn(N, generator=g) if with_bias else None
    x = torch.randn(40, K, generator=g)
    want = F.linear(x, w, b)  # 40 rows: the BLAS's per-row bits
    for M in range(1, lin.BLOCKED_MAX_ROWS):
        assert torch.equal(_bits(lin._blas_rows(x[:M], w, b)), _bits(want[:M])), M
    assert calls == list(range(1, lin.BLOCKED_MAX_ROWS))
    calls.clear()
    assert torch.equal(_bits(lin._blas_rows(x[:20], w, b)), _bits(want[:20]))  # 16 rows up: the BLAS
    assert calls == []


def test_large_weights_grad_and_other_dtypes_keep_f_linear(calls):
    _needs_rule(64, 40, False)
    calls.clear()
    g = torch.Generator().manual_seed(8)
    big = torch.randn(4200, 64, generator=g)  # 1.03 MiB: the native linear_cpu's size
    x = torch.randn(3, 64, generator=g)
    assert lin._blocked(x, big, None) is None
    w = torch.randn(40, 64, generator=g, requires_grad=True)
    out = lin._blas_rows(x, w, None)
    assert out.requires_grad and calls == []  # autograd: F.linear, which has a backward
    with torch.no_grad():
        lin._blas_rows(x, w, None)
    assert calls == [3]
    assert lin._blocked(x, w.detach().double(), None) is None
    assert lin._blocked(x, w.detach().t().contiguous().t(), None) is None  # not contiguous
    with torch.inference_mode():
        frozen = torch.randn(40, 64)
    assert lin._blocked(x, frozen, None) is None  # no version counter to see changes by


def test_a_changed_or_freed_weight_is_transposed_again(calls):
    _needs_rule(32, 40, False)
    calls.clear()
    g = torch.Generator().manual_seed(9)
    w = torch.randn(40, 32, generator=g)
    x = torch.randn(2, 32, generator=g)
    pad = torch.zeros(16, 32)
    pad[:2] = x
    first = lin._blas_rows(x, w, None)
    assert torch.equal(first, F.linear(pad, w)[:2])
    w.mul_(-2.0)  # in place: a stale Wᵀ would give the old result
    assert torch.equal(lin._blas_rows(x, w, None), F.linear(pad, w)[:2])
    with torch.no_grad():
        w.copy_(torch.randn(40, 32, generator=g))
    assert torch.equal(lin._blas_rows(x, w, None), F.linear(pad, w)[:2])
    assert len(calls) == 3
    key = id(w)
    assert key in lin._TRANSPOSED
    del w
    gc.collect()
    assert key not in lin._TRANSPOSED
