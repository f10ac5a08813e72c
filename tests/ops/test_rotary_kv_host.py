"""The native CPU rotary and K/V write against the references: bit for bit."""

import importlib

import pytest
import torch

import ponder.ops as ops
from ponder.ops import kv as kv_ops
from ponder.ops import reference

rotary_ops = importlib.import_module("ponder.ops.rotary")  # ponder.ops.rotary is also the op's name
from ponder.ops._registry import host_implementation


def fused_qkv(gen, T, H, Hk, D, dtype=torch.float32):
    """q, k, v as the model makes them: views into one fused projection row per token."""
    qkv = torch.randn(T, (H + 2 * Hk) * D, generator=gen).to(dtype)
    q, k, v = qkv.split([H * D, Hk * D, Hk * D], dim=-1)
    return q.reshape(T, H, D), k.reshape(T, Hk, D), v.reshape(T, Hk, D)


@pytest.mark.parametrize("T,H,Hk,D", [(1, 4, 2, 32), (7, 9, 3, 64), (33, 3, 1, 2), (5, 8, 8, 130)])
def test_rotary_host_is_the_reference_bit_for_bit(T, H, Hk, D):
    gen = torch.Generator().manual_seed(T * D)
    q, k, _ = fused_qkv(gen, T, H, Hk, D)
    assert T == 1 or q.stride(0) == (H + 2 * Hk) * D  # the strided views the model passes
    table = ops.rope_cache(D, 512, 10000.0)
    pos = torch.randint(0, 512, (T,), generator=gen)
    assert host_implementation("rotary") is rotary_ops._rotary_host
    got_q, got_k = rotary_ops._rotary_host(q, k, pos, table)
    want_q, want_k = reference.rotary(q, k, pos, table)
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)
    assert all(torch.equal(a, b) for a, b in zip(ops.rotary(q, k, pos, table), (want_q, want_k)))


def test_rotary_host_other_dtypes_run_the_reference():
    gen = torch.Generator().manual_seed(1)
    q, k, _ = fused_qkv(gen, 4, 4, 2, 16, torch.bfloat16)
    table, pos = ops.rope_cache(16, 64, 10000.0), torch.arange(4)
    for got, want in zip(rotary_ops._rotary_host(q, k, pos, table), reference.rotary(q, k, pos, table)):
        assert torch.equal(got, want)


def test_rotary_native_refuses_positions_past_the_table():
    from ponder import _core

    q = torch.zeros(2, 1, 4)
    out = torch.zeros(2, 1, 4)
    pos = torch.tensor([0, 8])
    table = torch.zeros(8, 4)
    with pytest.raises(IndexError, match=r"positions\[1\] = 8"):
        _core.rotary_cpu(q.data_ptr(), 4, q.data_ptr(), 4, 2, 1, 1, 4, pos.data_ptr(), table.data_ptr(), 8,
                         out.data_ptr(), out.data_ptr())


@pytest.mark.parametrize("slots", [[9, 10, -1, 0], [3], [-1, -1]])
def test_append_kv_host_writes_what_the_reference_writes(slots):
    gen = torch.Generator().manual_seed(len(slots))
    _, k, v = fused_qkv(gen, len(slots), 4, 2, 16)
    a = torch.randn(3, 2, 4, 4, 2, 16, generator=gen)
    b = a.clone()
    sm = torch.tensor(slots)
    assert host_implementation("append_kv") is kv_ops._append_kv_host
    kv_ops._append_kv_host(a, 1, k, v, sm)
    reference.append_kv(b, 1, k, v, sm)
    assert torch.equal(a, b)


def test_append_kv_host_refuses_a_bad_slot_and_writes_nothing():
    gen = torch.Generator().manual_seed(2)
    _, k, v = fused_qkv(gen, 2, 2, 1, 8)
    kv = torch.zeros(1, 2, 2, 2, 1, 8)
    with pytest.raises(IndexError, match=r"slot_mapping\[1\] = 4"):
        kv_ops._append_kv_host(kv, 0, k, v, torch.tensor([0, 4]))
    assert not kv.any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.uint8])
@pytest.mark.parametrize("shape,src,dst", [
    ((2, 9, 16, 8, 12), [0, 3, 3], [1, 4, 8]),  # one source copied twice
    ((3, 5, 3, 1, 7), [4], [0]),  # odd page size, the last page onto the first
    ((1, 2, 1, 1, 1), [1], [0]),  # one-element pages
])
def test_copy_pages_host_copies_what_the_reference_copies(dtype, shape, src, dst):
    L, P, S, Hk, D = shape
    g = torch.Generator().manual_seed(P * D)
    kv = torch.randint(0, 100, (L, 2, P, S, Hk, D), generator=g).to(dtype)
    want = kv.clone()
    s, d = torch.tensor(src, dtype=torch.int32), torch.tensor(dst, dtype=torch.int32)
    assert host_implementation("copy_pages") is kv_ops._copy_pages_host
    reference.copy_pages(want, s, d)
    ops.copy_pages(kv, s, d)  # "auto" on the CPU: the host implementation
    assert torch.equal(kv, want)


def test_copy_pages_host_reads_strided_page_lists():
    kv = torch.randn(2, 2, 6, 2, 1, 4, generator=torch.Generator().manual_seed(3))
    want = kv.clone()
    pairs = torch.tensor([[0, 9], [5, 9], [2, 9]], dtype=torch.int32)
    pages = torch.tensor([[0, 3], [5, 1]], dtype=torch.int32)
    src, dst = pages[:, 0], pages[:, 1]  # column views: stride 2
    assert src.stride(0) == 2 and pairs.shape == (3, 2)
    reference.copy_pages(want, src, dst)
    kv_ops._copy_pages_host(kv, src, dst)
    assert torch.equal(kv, want)


@pytest.mark.parametrize("src,dst,match", [
    ([0, 1], [2, 2], r"dst_pages must be distinct: page 2 appears twice"),
    ([0, 2], [2, 3], r"src_pages\[1\] = 2 is also a destination"),
    ([1], [1], r"src_pages\[0\] = 1 is also a destination"),
])
def test_copy_pages_host_refuses_copies_whose_order_matters(src, dst, match):
    kv = torch.randn(1, 2, 4, 2, 1, 3, generator=torch.Generator().manual_seed(4))
    before = kv.clone()
    with pytest.raises(ValueError, match=match):
        ops.copy_pages(kv, torch.tensor(src, dtype=torch.int32), torch.tensor(dst, dtype=torch.int32))
    assert torch.equal(kv, before)


def test_copy_pages_native_checks_ids_before_writing():
    from ponder import _core

    kv = torch.randn(1, 2, 4, 2, 1, 3, generator=torch.Generator().manual_seed(5))
    before = kv.clone()
    page_bytes = 2 * 1 * 3 * 4
    src, dst = torch.tensor([0, 1], dtype=torch.int32), torch.tensor([2, 4], dtype=torch.int32)
    with pytest.raises(IndexError, match=r"dst_pages\[1\] = 4 must lie in \[0, 4\)"):
        _core.copy_pages_cpu(kv.data_ptr(), 2, 4, page_bytes, src.data_ptr(), dst.data_ptr(), 2)
    with pytest.raises(ValueError, match="num_planes, num_pages and page_bytes must be > 0"):
        _core.copy_pages_cpu(kv.data_ptr(), 2, 4, 0, src.data_ptr(), dst.data_ptr(), 2)
    assert torch.equal(kv, before)
