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
@pytest.mark.parametrize("shape", [(2, 9, 16, 8, 128), (3, 5, 3, 1, 7)])  # (L, P, S, Hk, D); odd sizes take narrow paths
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
