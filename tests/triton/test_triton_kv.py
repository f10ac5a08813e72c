"""Triton append_kv and copy_pages against ponder.ops.reference (bit-exact: they only move data)."""

import pytest
import torch

import ponder.ops as ops
from ponder.ops import reference


def _cache(L, P, S, Hk, D, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(L * 100 + P)
    return torch.randn(L, 2, P, S, Hk, D, generator=g).to(dtype=dtype, device=device)


@pytest.mark.parametrize("shape", [(2, 5, 3, 2, 5), (1, 4, 16, 1, 64), (3, 7, 2, 3, 40)])  # (L, P, S, Hk, D)
def test_append_kv_matches_reference(device, shape):
    L, P, S, Hk, D = shape
    kv = _cache(L, P, S, Hk, D, device=device)
    T = 6
    g = torch.Generator().manual_seed(1)
    k = torch.randn(T, Hk, D, generator=g).to(device)
    v = torch.randn(T, Hk, D, generator=g).to(device)
    slots = torch.randperm(P * S, generator=g)[:T]
    slots[2] = -1  # padding row: not written
    slots = slots.to(device)
    expected = kv.clone()
    reference.append_kv(expected, L - 1, k, v, slots)
    ops.append_kv(kv, L - 1, k, v, slots, backend="triton")
    assert torch.equal(kv, expected)


def test_append_kv_strided_rows(device):
    kv = _cache(1, 3, 4, 2, 8, device=device)
    base = torch.randn(5, 2, 16, generator=torch.Generator().manual_seed(2)).to(device)
    k, v = base[..., :8], base[..., 8:]  # non-contiguous views of one projection output
    slots = torch.tensor([0, 5, 11, -1, 7], device=device)
    expected = kv.clone()
    reference.append_kv(expected, 0, k, v, slots)
    ops.append_kv(kv, 0, k, v, slots, backend="triton")
    assert torch.equal(kv, expected)


@pytest.mark.parametrize("shape", [(2, 9, 3, 2, 5), (1, 6, 16, 2, 64)])
def test_copy_pages_matches_reference(device, shape):
    L, P, S, Hk, D = shape
    kv = _cache(L, P, S, Hk, D, device=device)
    src = torch.tensor([0, 4, 4], dtype=torch.int32, device=device)
    dst = torch.tensor([5, 1, 2], dtype=torch.int32, device=device)
    expected = kv.clone()
    reference.copy_pages(expected, src, dst)
    ops.copy_pages(kv, src, dst, backend="triton")
    assert torch.equal(kv, expected)
    assert not torch.equal(kv[:, :, 5], _cache(L, P, S, Hk, D, device=device)[:, :, 5])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.uint8])
def test_gpu_kv_ops_move_bits_exactly(dtype):
    L, P, S, Hk, D = 2, 11, 16, 8, 128
    kv = torch.randint(0, 100, (L, 2, P, S, Hk, D)).to(dtype=dtype, device="cuda")
    expected = kv.clone()
    src = torch.tensor([1, 3], dtype=torch.int32, device="cuda")
    dst = torch.tensor([7, 9], dtype=torch.int32, device="cuda")
    reference.copy_pages(expected, src, dst)
    ops.copy_pages(kv, src, dst, backend="triton")
    assert torch.equal(kv, expected)
    if dtype == torch.uint8:
        return  # append_kv is for float caches
    k = torch.randn(9, Hk, D, device="cuda").to(dtype)
    v = torch.randn(9, Hk, D, device="cuda").to(dtype)
    slots = torch.tensor([0, 17, 33, -1, 50, 80, 99, 120, 175], device="cuda")
    reference.append_kv(expected, 1, k, v, slots)
    ops.append_kv(kv, 1, k, v, slots, backend="triton")
    assert torch.equal(kv, expected)
