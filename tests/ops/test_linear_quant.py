"""linear_quant_cpu (fp32 rows times GGUF blocks) against linear_cpu on the de-quantised weights
and the exact reference ``ops.reference.linear_lanes``: bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ponder.models.gguf_file import dequantize
from quant_blocks import random_blocks
from ponder.ops import linear as lin
from ponder.ops import reference

pytestmark = pytest.mark.skipif(not lin.quant_available(), reason="no linear_quant_cpu on this build / CPU")


def native_fp32(x, w, bias=None, threads=1):
    M, K = x.shape
    out = torch.empty(M, w.shape[0])
    lin._core.linear_cpu(x.data_ptr(), M, K, x.stride(0), w.data_ptr(), w.shape[0],
                         0 if bias is None else bias.data_ptr(), out.data_ptr(), w.shape[0], threads, 0)
    return out


def native_quant(x, blocks, type_name, N, bias=None, threads=1, out_stride=None, isa=0):
    M, K = x.shape
    out_stride = out_stride or N
    out = torch.full((M, out_stride), 7.0)
    data = torch.from_numpy(blocks)
    lin._core.linear_quant_cpu(x.data_ptr(), M, K, x.stride(0), data.data_ptr(), lin.QUANT_TYPES[type_name][0], N,
                               0 if bias is None else bias.data_ptr(), out.data_ptr(), out_stride, threads, isa)
    return out


# the kernel's instruction-set paths this CPU runs (1: AVX-512, 2: AVX2; as linear_cpu decides)
ISAS = [pytest.param(isa, id=name, marks=pytest.mark.skipif(not lin._core.linear_cpu_has(isa),
                                                          reason=f"this CPU has no {name} path"))
        for isa, name in ((1, "avx512"), (2, "avx2"))] if lin.quant_available() else []


def bits(t):
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("type_name", sorted(lin.QUANT_TYPES))
@pytest.mark.parametrize("M,N,K", [(1, 1, 32), (1, 7, 64), (2, 5, 96), (3, 33, 576), (4, 8, 64), (5, 9, 128),
                                   (9, 6, 32), (13, 12, 160)])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("isa", ISAS)
def test_quant_kernel_is_linear_cpu_on_the_dequantised_weights(type_name, M, N, K, with_bias, isa):
    blocks = random_blocks(type_name, N, K, seed=M * 1000 + N * 10 + K)
    w = torch.from_numpy(dequantize(blocks, type_name, (N, K)))
    g = torch.Generator().manual_seed(K + N)
    x = torch.randn(M, K, generator=g)
    bias = torch.randn(N, generator=g) if with_bias else None
    got = native_quant(x, blocks, type_name, N, bias, isa=isa)
    assert torch.equal(bits(got), bits(native_fp32(x, w, bias)))
    assert torch.equal(bits(got), bits(reference.linear_lanes(x, w, bias)))


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("isa", ISAS)
def test_quant_kernel_threads_and_strides_give_the_same_bits(threads, isa):
    N, K = 300, 576  # large enough to split over threads
    blocks = random_blocks("Q4_1", N, K, seed=11)
    w = torch.from_numpy(dequantize(blocks, "Q4_1", (N, K)))
    x_wide = torch.randn(6, K + 40, generator=torch.Generator().manual_seed(12))
    x = x_wide[:, 5:5 + K]  # rows K + 40 floats apart
    one = native_quant(x, blocks, "Q4_1", N, threads=1, out_stride=N + 3, isa=isa)
    many = native_quant(x, blocks, "Q4_1", N, threads=threads, out_stride=N + 3, isa=isa)
    assert torch.equal(bits(one), bits(many))
    assert torch.equal(bits(one[:, :N]), bits(native_fp32(x.contiguous(), w)))
    assert torch.equal(one[:, N:], torch.full((6, 3), 7.0))  # the row padding is left alone


@pytest.mark.parametrize("isa", ISAS)
def test_quant_kernel_rows_do_not_depend_on_their_batch(isa):
    N, K = 40, 64
    blocks = random_blocks("Q8_0", N, K, seed=5)
    x = torch.randn(11, K, generator=torch.Generator().manual_seed(6))
    whole = native_quant(x, blocks, "Q8_0", N, isa=isa)
    for m in range(11):
        assert torch.equal(bits(native_quant(x[m:m + 1], blocks, "Q8_0", N, isa=isa)), bits(whole[m:m + 1]))


def test_quant_kernel_refuses_bad_arguments_before_writing():
    blocks = torch.from_numpy(random_blocks("Q4_0", 4, 64, seed=1))
    x = torch.randn(2, 64)
    out = torch.zeros(2, 4)
    call = lin._core.linear_quant_cpu
    with pytest.raises(ValueError, match=r"in_features must be a multiple of 32 \(the block size\), got 48"):
        call(x.data_ptr(), 2, 48, 64, blocks.data_ptr(), 2, 4, 0, out.data_ptr(), 4, 1)
    with pytest.raises(ValueError, match=r"type must be 2 \(Q4_0\), 3 \(Q4_1\) or 8 \(Q8_0\), got 6"):
        call(x.data_ptr(), 2, 64, 64, blocks.data_ptr(), 6, 4, 0, out.data_ptr(), 4, 1)
    with pytest.raises(ValueError, match=r"x_row_stride must be >= in_features = 64, got 32"):
        call(x.data_ptr(), 2, 64, 32, blocks.data_ptr(), 2, 4, 0, out.data_ptr(), 4, 1)
    with pytest.raises(ValueError, match=r"num_threads must be >= 1, got 0"):
        call(x.data_ptr(), 2, 64, 64, blocks.data_ptr(), 2, 4, 0, out.data_ptr(), 4, 0)
    with pytest.raises(ValueError, match=r"isa must be 0 \(auto\), 1 \(avx512\) or 2 \(avx2\)"):
        call(x.data_ptr(), 2, 64, 64, blocks.data_ptr(), 2, 4, 0, out.data_ptr(), 4, 1, 3)
    if not lin._core.linear_cpu_has(1):
        with pytest.raises(ValueError, match=r"no such instruction-set path: isa 1"):
            call(x.data_ptr(), 2, 64, 64, blocks.data_ptr(), 2, 4, 0, out.data_ptr(), 4, 1, 1)
    assert not out.any()
    assert [lin._core.quant_block_bytes(t) for t in (2, 3, 8)] == [18, 20, 34]


@pytest.mark.parametrize("type_name", ["Q4_1", "Q8_0"])
def test_attached_blocks_give_linear_the_same_bits(type_name, monkeypatch):
    N, K = 700, 512  # 1.4 MB of fp32: a weight ops.linear sends to the native kernel
    blocks = random_blocks(type_name, N, K, seed=3)
    w = torch.from_numpy(dequantize(blocks, type_name, (N, K)))
    bias = torch.randn(N, generator=torch.Generator().manual_seed(4))
    x = torch.randn(3, K, generator=torch.Generator().manual_seed(5))
    want = lin.linear(x, w, bias)
    calls = []
    quant = lin._core.linear_quant_cpu
    monkeypatch.setattr(lin._core, "linear_quant_cpu", lambda *a: (calls.append(a[1]), quant(*a))[1])
    lin.attach_quantized(w, blocks, type_name)
    try:
        assert lin.quantized_blocks(w)[1] == lin.QUANT_TYPES[type_name][0]
        assert torch.equal(bits(lin.linear(x, w, bias)), bits(want))
        assert torch.equal(bits(lin.linear_rows(x, w, bias)), bits(want))
        assert calls == [3, 3]
        many = torch.randn(lin.QUANT_MAX_ROWS + 1, K)
        assert torch.equal(bits(lin.linear(many, w)), bits(native_fp32(many, w)))  # more rows: fp32 weights
        assert calls == [3, 3]
        with torch.no_grad():
            w[0, 0] += 1.0  # changed in place: the blocks no longer describe it and are dropped
        assert lin.quantized_blocks(w) is None
        assert torch.equal(bits(lin.linear(x, w, bias)), bits(native_fp32(x, w, bias)))
        assert calls == [3, 3]
    finally:
        lin.detach_quantized(w)


def test_attach_refuses_blocks_that_are_not_the_weight():
    N, K = 8, 64
    blocks = random_blocks("Q4_1", N, K, seed=9)
    w = torch.from_numpy(dequantize(blocks, "Q4_1", (N, K)))
    other = w.clone()
    other[3, 17] = torch.nextafter(other[3, 17], torch.tensor(float("inf")))
    with pytest.raises(ValueError, match=r"do not de-quantise to weight bit for bit \(Q4_1, \[8, 64\]\)"):
        lin.attach_quantized(other, blocks, "Q4_1")
    assert lin.quantized_blocks(other) is None
    with pytest.raises(ValueError, match=r"type_name must be one of \['Q4_0', 'Q4_1', 'Q8_0'\], got 'Q5_0'"):
        lin.attach_quantized(w, blocks, "Q5_0")
    with pytest.raises(ValueError, match=r"blocks must hold 320 bytes \(8 x 2 Q4_1 blocks of 20\), got 319"):
        lin.attach_quantized(w, blocks[:-1], "Q4_1")
    with pytest.raises(TypeError, match=r"weight must be a contiguous float32 CPU matrix \[N, K\]"):
        lin.attach_quantized(w.to(torch.bfloat16), blocks, "Q4_1")
    with pytest.raises(TypeError, match=r"blocks must be uint8 bytes on the CPU, got torch.int8"):
        lin.attach_quantized(w, torch.from_numpy(blocks.view(np.int8)), "Q4_1")
    with pytest.raises(ValueError, match=r"in_features must be a multiple of 32 \(the block size\), got 48"):
        lin.attach_quantized(torch.zeros(8, 48), blocks, "Q4_1")
    with torch.inference_mode():
        frozen = w.clone()
    with pytest.raises(ValueError, match="inference tensor"):
        lin.attach_quantized(frozen, blocks, "Q4_1")


def test_blocks_are_forgotten_with_their_weight():
    blocks = random_blocks("Q8_0", 4, 32, seed=2)
    w = torch.from_numpy(dequantize(blocks, "Q8_0", (4, 32)))
    lin.attach_quantized(w, blocks, "Q8_0")
    key = id(w)
    assert key in lin._QUANTIZED
    del w
    assert key not in lin._QUANTIZED


def test_attach_keeps_its_own_copy_of_the_blocks(recwarn):
    blocks = random_blocks("Q8_0", 4, 64, seed=8)
    w = torch.from_numpy(dequantize(blocks, "Q8_0", (4, 64)))
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(9))
    want = native_fp32(x, w)
    read_only = blocks.copy()
    read_only.flags.writeable = False  # as a file map's bytes are
    lin.attach_quantized(w, read_only, "Q8_0")
    assert not [w_ for w_ in recwarn if issubclass(w_.category, UserWarning)]
    mine = torch.from_numpy(blocks.copy())
    lin.attach_quantized(w, mine, "Q8_0")
    mine.zero_()  # the caller's tensor changes; the kept blocks do not
    kept, type_id = lin.quantized_blocks(w)
    assert kept.data_ptr() != mine.data_ptr()
    out = torch.empty(2, 4)
    lin._core.linear_quant_cpu(x.data_ptr(), 2, 64, 64, kept.data_ptr(), type_id, 4, 0, out.data_ptr(), 4, 1)
    assert torch.equal(bits(out), bits(want))
    lin.detach_quantized(w)
