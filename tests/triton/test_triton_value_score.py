"""Triton value_score against ponder.ops.reference.value_score."""

import pytest
import torch

import ponder.ops as ops
from ponder.ops import reference

# fp32 dot products of up to 300 terms summed block-wise instead of in one matmul, and
# 1/sqrt instead of rsqrt in the norm: a few ulp on scores in (0, 1).
FP32_TOL = dict(atol=2e-6, rtol=2e-6)


def _inputs(N, C, M, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, C, generator=g).to(dtype=dtype, device=device)
    rows = torch.randint(0, N, (M,), generator=g).to(device)
    weight = (1 + 0.1 * torch.randn(C, generator=g)).to(dtype=dtype, device=device)
    direction = (torch.randn(C, generator=g) / C**0.5).to(device)
    parent = torch.rand(M, generator=g).to(device)
    depth = torch.randint(1, 5, (M,), generator=g, dtype=torch.int32).to(device)
    return hidden, rows, weight, direction, parent, depth


@pytest.mark.parametrize("mode", ["last", "min", "prod", "mean"])
@pytest.mark.parametrize("with_norm", [True, False])
@pytest.mark.parametrize("C", [24, 300])  # 300: several blocks, none a power of two
def test_value_score_matches_reference(device, mode, with_norm, C):
    hidden, rows, weight, direction, parent, depth = _inputs(9, C, 7, device, seed=C)
    norm = weight if with_norm else None
    expected = reference.value_score(hidden, rows, norm, 1e-6, direction, 0.25, parent, depth, mode)
    score, path = ops.value_score(hidden, rows, norm, 1e-6, direction, 0.25, parent, depth, mode, backend="triton")
    torch.testing.assert_close(score, expected[0], **FP32_TOL)
    torch.testing.assert_close(path, expected[1], **FP32_TOL)


def test_value_score_token_pair_prm_equals_two_way_softmax(device):
    # A PRM reads P(good) = softmax(logits[[good, bad]])[0]; the fused op gets it from W[good] - W[bad].
    hidden, rows, weight, _, parent, depth = _inputs(5, 40, 4, device, seed=3)
    lm_head = torch.randn(11, 40, generator=torch.Generator().manual_seed(4)).to(device)
    good, bad = 7, 2
    score, _ = ops.value_score(hidden, rows, weight, 1e-5, lm_head[good] - lm_head[bad], 0.0, parent, depth, "last",
                               backend="triton")  # fmt: skip
    logits = ops.rms_norm(hidden[rows], weight, 1e-5) @ lm_head.T
    torch.testing.assert_close(score, torch.softmax(logits[:, [good, bad]], dim=-1)[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_value_score_16bit(dtype):
    hidden, rows, weight, direction, parent, depth = _inputs(64, 4096, 48, "cuda", dtype=dtype, seed=5)
    expected = reference.value_score(hidden, rows, weight, 1e-5, direction, -0.1, parent, depth, "mean")
    got = ops.value_score(hidden, rows, weight, 1e-5, direction, -0.1, parent, depth, "mean", backend="triton")
    # 16-bit normalised states: an element may round the other way when rstd differs by an ulp
    # (rsqrt vs 1/sqrt); the 4096-term dot then moves by ~1e-3 at most, the sigmoid less.
    torch.testing.assert_close(got[0], expected[0], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(got[1], expected[1], atol=1e-3, rtol=1e-3)
