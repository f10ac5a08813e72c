"""ops.linear: the native host kernel against F.linear, batch invariance of its rows, the auto
dispatch (which weights go native), RowRoute's choice per row, a decoder whose decode rows take
the native kernel, and refused inputs."""

import pytest
import torch
import torch.nn.functional as F

from ponder.models import DecoderLM, ModelConfig
from ponder.ops import linear as lin

pytestmark = pytest.mark.skipif(not lin.native_available(), reason="ponder._core has no linear_cpu")

# (rows, K, N): K with and without a 16-float tail, N and rows off every tile size
SHAPES = [(1, 576, 960), (4, 37, 13), (7, 160, 22), (9, 5, 3), (33, 128, 51), (0, 16, 4)]


def _close(out, ref, x, w, bias=None):
    # fp32 sums in another order: within a few ulps of the sum of |terms| (K + 1 terms)
    mag = x.abs().double() @ w.abs().double().T
    if bias is not None:
        mag = mag + bias.abs().double()
    assert ((out.double() - ref.double()).abs() <= 2e-6 * mag + 1e-6).all()


@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_native_matches_f_linear(M, K, N, with_bias):
    g = torch.Generator().manual_seed(M * 1000 + K + N)
    x, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g)
    b = torch.randn(N, generator=g) if with_bias else None
    out = lin.linear(x, w, b, backend="native")
    assert out.shape == (M, N) and out.dtype == torch.float32
    _close(out, F.linear(x, w, b), x, w, b)


def test_strided_rows_and_leading_dims():
    g = torch.Generator().manual_seed(1)
    wide = torch.randn(6, 50, generator=g)
    x, w = wide[:, :37], torch.randn(11, 37, generator=g)  # rows 50 floats apart
    out = lin.linear(x, w, backend="native")
    assert torch.equal(out, lin.linear(x.contiguous(), w, backend="native"))
    x3 = torch.randn(2, 3, 37, generator=g)
    out3 = lin.linear(x3, w, backend="native")
    assert out3.shape == (2, 3, 11)
    assert torch.equal(out3.reshape(6, 11), lin.linear(x3.reshape(6, 37), w, backend="native"))
    colmajor = torch.randn(37, 5, generator=g).T  # last axis not contiguous: copied first
    _close(lin.linear(colmajor, w, backend="native"), F.linear(colmajor, w), colmajor, w)
    row = torch.randn(37, generator=g)
    same = row.expand(4, 37)  # rows 0 floats apart: copied, never read past the one row
    out = lin.linear(same, w, backend="native")
    assert torch.equal(out, lin.linear(row[None], w, backend="native").expand(4, 11))


@pytest.mark.parametrize("threads", [1, 2])
def test_rows_do_not_depend_on_the_batch(threads):
    g = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(70, 384, generator=g), torch.randn(1030, 384, generator=g), torch.randn(1030, generator=g)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        full = lin.linear(x, w, b, backend="native")
        for lo, hi in [(0, 1), (3, 7), (13, 14), (40, 70), (69, 70)]:
            assert torch.equal(lin.linear(x[lo:hi], w, b, backend="native"), full[lo:hi])
    finally:
        torch.set_num_threads(old)
    torch.set_num_threads(1 if threads == 2 else 2)
    try:
        assert torch.equal(lin.linear(x, w, b, backend="native"), full)  # nor on the thread count
    finally:
        torch.set_num_threads(old)


def test_isa_paths_agree_bit_for_bit():
    from ponder import _core

    if not (_core.linear_cpu_has(1) and _core.linear_cpu_has(2)):
        pytest.skip("this CPU lacks AVX-512 or AVX2")
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(13, 203, generator=g), torch.randn(29, 203, generator=g)
    outs = []
    for isa in (1, 2):
        out = torch.empty(13, 29)
        _core.linear_cpu(x.data_ptr(), 13, 203, 203, w.data_ptr(), 29, 0, out.data_ptr(), 29, 1, isa)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    _close(outs[0], F.linear(x, w), x, w)


@pytest.mark.parametrize("isa", [1, 2])
@pytest.mark.parametrize("M,K,N", [(1, 576, 7), (2, 37, 5), (3, 16, 4), (4, 1100, 9), (5, 5, 3), (8, 203, 13),
                                   (9, 48, 1), (11, 513, 8)])
def test_fma_paths_match_the_lane_reference(isa, M, K, N):
    """The AVX2 and AVX-512 paths against ops.reference.linear_lanes bit for bit: every row count
    of a tile (1-4) and past it, K with a 16-float tail, K over one 512-float chunk (1100), N not a
    multiple of a tile's 3 or 4 weight rows; x rows strided."""
    from ponder import _core
    from ponder.ops import reference

    if not _core.linear_cpu_has(isa):
        pytest.skip(f"this CPU lacks instruction-set path {isa}")
    g = torch.Generator().manual_seed(M * 1000 + K + N)
    xs = torch.randn(M, K + 5, generator=g)
    x, w, b = xs[:, :K], torch.randn(N, K, generator=g), torch.randn(N, generator=g)
    for bias in (None, b):
        out = torch.full((M, N + 2), -7.0)
        _core.linear_cpu(x.data_ptr(), M, K, K + 5, w.data_ptr(), N, 0 if bias is None else bias.data_ptr(),
                         out.data_ptr(), N + 2, 1, isa)
        want = reference.linear_lanes(x, w, bias)
        assert torch.equal(out[:, :N], want), (out[:, :N] - want).abs().max()
        assert (out[:, N:] == -7.0).all()  # nothing written past a row's outputs
    # a product large enough to split over threads gives the same bits
    big_w = torch.randn(300, K, generator=g)
    outs = []
    for threads in (1, 3):
        out = torch.empty(M, 300)
        _core.linear_cpu(x.data_ptr(), M, K, K + 5, big_w.data_ptr(), 300, 0, out.data_ptr(), 300, threads, isa)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0], reference.linear_lanes(x, big_w))


def test_auto_dispatch():
    g = torch.Generator().manual_seed(4)
    big = torch.randn(lin.NATIVE_MIN_WEIGHT_BYTES // 4 // 256 + 1, 256, generator=g)
    small = torch.randn(64, 256, generator=g)
    x = torch.randn(3, 256, generator=g)
    assert lin.native_eligible(big) and not lin.native_eligible(small)
    assert torch.equal(lin.linear(x, big), lin.linear(x, big, backend="native"))
    assert torch.equal(lin.linear(x, small), F.linear(x, small))
    assert torch.equal(lin.linear(x.bfloat16(), big.bfloat16()), F.linear(x.bfloat16(), big.bfloat16()))
    assert not lin.native_eligible(big.T)  # not contiguous
    assert not lin.native_eligible(big.bfloat16())
    trainable = big.clone().requires_grad_()
    assert not lin.native_eligible(trainable)  # autograd needs F.linear
    y = lin.linear(x, trainable)
    y.sum().backward()
    assert trainable.grad is not None
    with torch.inference_mode():
        assert lin.native_eligible(trainable)
    # an input that needs a gradient keeps F.linear (the native kernel has no backward)
    xg = x.clone().requires_grad_()
    lin.linear(xg, big).sum().backward()
    # d(sum)/dx = the column sums of big: 1,025 fp32 terms summed in another order
    torch.testing.assert_close(xg.grad, big.sum(0).expand(3, 256), rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="has no backward"):
        lin.linear(xg, big, backend="native")


def test_refused_inputs():
    w = torch.randn(4, 8)
    with pytest.raises(ValueError, match="weight has size 8 in dimension 1"):
        lin.linear(torch.randn(2, 9), w)
    with pytest.raises(ValueError, match="bias has size 3"):
        lin.linear(torch.randn(2, 8), w, torch.randn(3))
    with pytest.raises(TypeError, match="x must be"):
        lin.linear(torch.ones(2, 8, dtype=torch.int64), w)
    with pytest.raises(ValueError, match="backend must be one of"):
        lin.linear(torch.randn(2, 8), w, backend="mkl")
    with pytest.raises(TypeError, match="float32 CPU tensors; x is torch.bfloat16"):
        lin.linear(torch.randn(2, 8).bfloat16(), w, backend="native")
    with pytest.raises(ValueError, match="x must have at least one dimension"):
        lin.linear(torch.tensor(1.0), w)


def _indptr(lens):
    return torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32)


def test_row_route_per_row():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(1100, 256, generator=g)  # 1.1 MB: short sequences' rows go native
    n = lin.NATIVE_MAX_SEQUENCE_TOKENS
    lens = [1, n + 1, 1, n, 2]
    x = torch.randn(sum(lens), 256, generator=g)
    route = lin.RowRoute(_indptr(lens), x.shape[0])
    assert route.kind == "split"
    out = route(x, w)
    starts = [0] + list(torch.tensor(lens).cumsum(0))
    multi = torch.arange(starts[1], starts[2])  # the one sequence of more than n tokens
    single = torch.tensor([i for i in range(x.shape[0]) if not starts[1] <= i < starts[2]])
    assert torch.equal(out[single], lin.linear(x[single], w, backend="native"))
    assert torch.equal(out[multi], F.linear(x[multi], w))
    assert lin.RowRoute(_indptr([1, 1, 1]), 3).kind == "native"
    assert lin.RowRoute(_indptr([2, n]), n + 2).kind == "native"
    assert lin.RowRoute(_indptr([n + 1, 40]), n + 41).kind == "torch"
    small = torch.randn(40, 256, generator=g)  # small weights: F.linear for every row
    assert torch.equal(route(x, small), F.linear(x, small))
    few = lin.RowRoute(_indptr([1, 1]), 2)
    assert torch.equal(few(x[:2], small), F.linear(x[:16], small)[:2])  # ... on at least 16 rows
    xb, wb = x.bfloat16(), w.bfloat16()
    assert torch.equal(route(xb, wb), F.linear(xb, wb))  # bf16: F.linear
    trainable = w.clone().requires_grad_()
    assert torch.equal(route(x, trainable), F.linear(x, trainable))  # autograd: F.linear


def test_linear_rows_gives_each_row_the_same_bits_at_any_row_count():
    g = torch.Generator().manual_seed(6)
    # small heads (F.linear on 16 rows or more: MKL varies below 4 rows on some CPUs) and a large one
    for n, k in [(40, 128), (7, 33), (300, 64), (1100, 256)]:
        w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
        x = torch.randn(9, k, generator=g)
        full = lin.linear_rows(x, w, b)
        for lo, hi in [(0, 1), (2, 4), (5, 8), (8, 9)]:
            assert torch.equal(lin.linear_rows(x[lo:hi], w, b), full[lo:hi])
        # fp32 sums of up to 256 terms of N(0, 1) products in another order: a few ulps of ~16
        torch.testing.assert_close(full, F.linear(x, w, b), rtol=1e-4, atol=1e-4)
    assert lin.linear_rows(x.bfloat16(), w.bfloat16()).dtype == torch.bfloat16  # F.linear


def _model():
    # gate_up 2 x 512 x 256 fp32 = 1 MiB: native for decode rows; the other matrices stay in MKL,
    # which always gets 16 rows or more
    cfg = ModelConfig(vocab_size=40, hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=64, max_position_embeddings=64, eos_token_id=0)
    torch.manual_seed(0)
    return DecoderLM(cfg, value_head=False, init_std=0.1).eval()


def _forward(model, kv, seqs, S=8):
    """One forward: seqs = [(tokens, first position, pages)]; returns the hidden rows."""
    ids, pos, slots, tables, lens, indptr = [], [], [], [], [], [0]
    width = max(len(p) for _, _, p in seqs)
    for toks, start, pages in seqs:
        for j, t in enumerate(toks):
            ids.append(t)
            pos.append(start + j)
            slots.append(pages[(start + j) // S] * S + (start + j) % S)
        tables.append(pages + [-1] * (width - len(pages)))
        lens.append(start + len(toks))
        indptr.append(indptr[-1] + len(toks))
    with torch.inference_mode():
        return model(torch.tensor(ids), torch.tensor(pos), kv, torch.tensor(slots),
                     torch.tensor(tables, dtype=torch.int32), torch.tensor(lens, dtype=torch.int32),
                     torch.tensor(indptr, dtype=torch.int32))


def test_decoder_decode_rows_take_the_native_kernel_and_do_not_depend_on_the_batch():
    model = _model()
    with torch.inference_mode():
        assert lin.native_eligible(model.layers[0].gate_up_weight)
        assert not lin.native_eligible(model.layers[0].down_weight)
    kv = model.allocate_kv_cache(8, 8)
    prompts = [[3, 4, 5, 6, 7], [8, 9, 10], [11, 12, 13, 14]]
    pages = [[0, 1], [2, 3], [4, 5]]
    _forward(model, kv, [(p, 0, pg) for p, pg in zip(prompts, pages)])  # prefill all three
    alone = _forward(model, kv.clone(), [([20], 5, pages[0])])
    together = _forward(model, kv.clone(), [([20], 5, pages[0]), ([21], 3, pages[1]), ([22], 4, pages[2])])
    assert torch.equal(alone[0], together[0])
    # a decode row next to another sequence's prefill takes the same path
    mixed = _forward(model, kv.clone(), [([20], 5, pages[0]), ([23, 24, 25], 4, pages[2])])
    assert torch.equal(mixed[0], alone[0])
    # and matches F.linear everywhere up to rounding
    with torch.inference_mode():
        ids = torch.tensor(prompts[0] + [20])
        dense = model.forward_dense(ids[None])[0, -1]
    assert torch.allclose(alone[0], dense, atol=1e-4, rtol=1e-4)  # fp32, 2 layers, different sum orders
    # the LM head: a row's logits do not depend on the rows beside it either
    with torch.inference_mode():
        assert torch.equal(model.logits(together[:1]), model.logits(together)[:1])


def test_decoder_prefill_rows_do_not_depend_on_the_batch():
    model = _model()
    kv = model.allocate_kv_cache(16, 8)
    n = lin.NATIVE_MAX_SEQUENCE_TOKENS
    g = torch.Generator().manual_seed(7)
    long_a = torch.randint(1, 40, (n + 5,), generator=g).tolist()  # F.linear rows
    long_b = torch.randint(1, 40, (n + 9,), generator=g).tolist()
    short = torch.randint(1, 40, (3,), generator=g).tolist()  # native rows
    pa, pb, ps = [0, 1, 2], [3, 4, 5, 6], [7]
    alone_a = _forward(model, kv.clone(), [(long_a, 0, pa)])
    alone_s = _forward(model, kv.clone(), [(short, 0, ps)])
    together = _forward(model, kv.clone(), [(short, 0, ps), (long_a, 0, pa), (long_b, 0, pb)])
    assert torch.equal(together[:3], alone_s)
    assert torch.equal(together[3:3 + len(long_a)], alone_a)
