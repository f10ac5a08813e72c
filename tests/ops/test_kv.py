import pytest
import torch

import ponder.ops as ops
from ponder.ops import reference


def _kv(L=2, P=7, S=3, Hk=2, D=5, dtype=torch.float32, device="cpu"):
    n = L * 2 * P * S * Hk * D
    return torch.arange(n, dtype=torch.float32).reshape(L, 2, P, S, Hk, D).to(dtype=dtype, device=device)


def test_copy_pages_reference_literal():
    kv = _kv()
    before = kv.clone()
    ops.copy_pages(kv, torch.tensor([0, 4], dtype=torch.int32), torch.tensor([6, 1], dtype=torch.int32))
    assert torch.equal(kv[:, :, 6], before[:, :, 0])
    assert torch.equal(kv[:, :, 1], before[:, :, 4])
    untouched = [0, 2, 3, 4, 5]
    assert torch.equal(kv[:, :, untouched], before[:, :, untouched])


def test_copy_pages_empty_is_noop():
    kv = _kv()
    before = kv.clone()
    ops.copy_pages(kv, torch.empty(0, dtype=torch.int32), torch.empty(0, dtype=torch.int32))
    assert torch.equal(kv, before)


@pytest.mark.parametrize(
    "src,dst,exc,match",
    [
        (torch.tensor([0]), torch.tensor([1], dtype=torch.int32), TypeError, "src_pages must be a 1-D int32"),
        (torch.tensor([0], dtype=torch.int32), torch.tensor([7], dtype=torch.int32), ValueError, r"\[0, 7\)"),
        (torch.tensor([-1], dtype=torch.int32), torch.tensor([2], dtype=torch.int32), ValueError, r"\[0, 7\)"),
        (torch.tensor([0, 1], dtype=torch.int32), torch.tensor([2], dtype=torch.int32), ValueError, "same length"),
    ],
)
def test_copy_pages_bad_input(src, dst, exc, match):
    kv = _kv()
    before = kv.clone()
    with pytest.raises(exc, match=match):
        ops.copy_pages(kv, src, dst)
    assert torch.equal(kv, before)


def test_copy_pages_bad_cache_shape():
    with pytest.raises(ValueError, match=r"\[L, 2, P, S, Hk, D\]"):
        ops.copy_pages(torch.zeros(2, 3, 4), torch.tensor([0], dtype=torch.int32), torch.tensor([1], dtype=torch.int32))


def test_copy_pages_opcheck():
    kv = _kv()
    src = torch.tensor([0, 3], dtype=torch.int32)
    dst = torch.tensor([5, 2], dtype=torch.int32)
    torch.library.opcheck(torch.ops.ponder.copy_pages.default, (kv, src, dst, "torch"))


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.copy_pages(_kv(), torch.tensor([0], dtype=torch.int32), torch.tensor([1], dtype=torch.int32), backend="cuDNN")


def test_cuda_backend_refused_on_cpu_tensors():
    with pytest.raises(ValueError, match="cannot run on device cpu"):
        ops.copy_pages(_kv(), torch.tensor([0], dtype=torch.int32), torch.tensor([1], dtype=torch.int32), backend="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.uint8])
@pytest.mark.parametrize("shape", [(2, 9, 16, 8, 128), (3, 9, 3, 1, 7)])  # (L, P, S, Hk, D); odd sizes take narrow paths
def test_copy_pages_cuda_matches_reference(dtype, shape):
    from ponder import _core

    if not _core.CUDA_BUILT:
        pytest.skip("ponder was built without CUDA kernels")
    L, P, S, Hk, D = shape
    g = torch.Generator().manual_seed(0)
    kv = torch.randint(0, 100, (L, 2, P, S, Hk, D), generator=g).to(dtype).cuda()
    expected = kv.clone()
    src = torch.tensor([0, 3, 3], dtype=torch.int32, device="cuda")
    dst = torch.tensor([1, 4, 8], dtype=torch.int32, device="cuda")
    reference.copy_pages(expected, src, dst)
    ops.copy_pages(kv, src, dst, backend="cuda")
    torch.cuda.synchronize()
    assert torch.equal(kv, expected)


def _kv_nan(L=2, P=5, S=4, Hk=2, D=3, dtype=torch.float32):
    return torch.full((L, 2, P, S, Hk, D), float("nan"), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_append_kv_literal(dtype):
    kv = _kv_nan(dtype=dtype)
    before = kv.clone()
    k = torch.arange(3 * 2 * 3, dtype=torch.float32).reshape(3, 2, 3).to(dtype)
    v = -k
    ops.append_kv(kv, 1, k, v, torch.tensor([9, 10, -1]))  # page 2 offsets 1, 2; row 2 skipped
    assert torch.equal(kv[1, 0, 2, 1], k[0]) and torch.equal(kv[1, 1, 2, 1], v[0])
    assert torch.equal(kv[1, 0, 2, 2], k[1]) and torch.equal(kv[1, 1, 2, 2], v[1])
    written = torch.zeros(kv.shape, dtype=torch.bool)
    written[1, :, 2, 1:3] = True
    # everything else is untouched (still NaN, compared as equal_nan)
    assert torch.equal(kv[~written].isnan(), before[~written].isnan())
    assert kv[~written].isnan().all()


@pytest.mark.parametrize("S", [1, 4, 16])
def test_append_kv_matches_naive_loop(S):
    g = torch.Generator().manual_seed(3)
    L, P, Hk, D, T = 3, 12, 2, 5, 11
    kv = torch.randn(L, 2, P, S, Hk, D, generator=g)
    expected = kv.clone()
    slots = torch.randperm(P * S, generator=g)[:T]
    slots[::4] = -1
    k = torch.randn(T, Hk, D, generator=g)
    v = torch.randn(T, Hk, D, generator=g)
    for t in range(T):
        s = int(slots[t])
        if s >= 0:
            expected[2, 0, s // S, s % S] = k[t]
            expected[2, 1, s // S, s % S] = v[t]
    ops.append_kv(kv, 2, k, v, slots)
    assert torch.equal(kv, expected)


def test_append_kv_all_skipped_and_empty_are_noops():
    kv = _kv()
    before = kv.clone()
    k = torch.ones(2, 2, 5)
    ops.append_kv(kv, 0, k, k, torch.tensor([-1, -1]))
    ops.append_kv(kv, 0, k[:0], k[:0], torch.empty(0, dtype=torch.int64))
    assert torch.equal(kv, before)


def test_append_kv_opcheck():
    kv = _kv()
    k = torch.randn(3, 2, 5)
    torch.library.opcheck(torch.ops.ponder.append_kv.default, (kv, 1, k, -k, torch.tensor([4, -1, 20]), "torch"))


@pytest.mark.parametrize(
    "layer,k,slots,exc,match",
    [
        (2, torch.ones(2, 2, 5), torch.tensor([0, 1]), IndexError, r"layer must lie in \[0, 2\)"),
        (0, torch.ones(2, 3, 5), torch.tensor([0, 1]), ValueError, "Hk, the kv_cache's KV heads"),
        (0, torch.ones(2, 2, 4), torch.tensor([0, 1]), ValueError, "D, the kv_cache's head dim"),
        (0, torch.ones(2, 2, 5, dtype=torch.bfloat16), torch.tensor([0, 1]), TypeError, "must match"),
        (0, torch.ones(2, 2, 5), torch.tensor([0, 1], dtype=torch.int32), TypeError, "slot_mapping must be a 1-D int64"),
        (0, torch.ones(2, 2, 5), torch.tensor([0]), ValueError, "slot_mapping has size 1"),
        (0, torch.ones(2, 2, 5), torch.tensor([0, 21]), IndexError, r"\[0, 21\).*got values in \[0, 21\]"),
        (0, torch.ones(2, 2, 5), torch.tensor([-2, 3]), IndexError, r"-1 \(skip\)"),
    ],
)
def test_append_kv_bad_input(layer, k, slots, exc, match):
    kv = _kv()  # L=2, P=7, S=3, Hk=2, D=5: 21 slots
    before = kv.clone()
    with pytest.raises(exc, match=match):
        ops.append_kv(kv, layer, k, k, slots)
    assert torch.equal(kv, before)
    ops.append_kv(kv, 0, torch.ones(1, 2, 5), torch.ones(1, 2, 5), torch.tensor([20]))
    assert torch.equal(kv[0, :, 6, 2], torch.ones(2, 2, 5))


def test_append_kv_k_v_row_mismatch():
    with pytest.raises(ValueError, match="same number of rows"):
        ops.append_kv(_kv(), 0, torch.ones(2, 2, 5), torch.ones(3, 2, 5), torch.tensor([0, 1]))
