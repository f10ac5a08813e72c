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
