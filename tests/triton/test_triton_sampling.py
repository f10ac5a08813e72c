"""Triton sampling against ponder.ops.reference.sample: the same token, bit for bit."""

import pytest
import torch

import ponder.ops as ops
from ponder.ops import reference

# logprob = z[token] - logsumexp(z): the kernel accumulates the sum block by block while
# torch.log_softmax does it in one reduction; fp32 rounding of a sum of up to 3000 terms.
LOGPROB_TOL = dict(atol=2e-5, rtol=1e-5)


def _rows(B, V, seed, device):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, V, generator=g) * 3).to(device)
    keys = torch.randint(-(2**62), 2**62, (B, 4), generator=g).to(device)
    return logits, keys


def _check_same(logits, keys, temperature, top_k, top_p):
    expected = reference.sample(logits, keys, temperature, top_k, top_p)
    tokens, logprobs = ops.sample(logits, keys, temperature, top_k, top_p, backend="triton")
    assert tokens.tolist() == expected[0].tolist()
    torch.testing.assert_close(logprobs, expected[1], **LOGPROB_TOL)
    return tokens


@pytest.mark.parametrize("V", [37, 3000])  # one partial block; several blocks of 1024
def test_sample_matches_reference_across_settings(device, V):
    B = 16
    logits, keys = _rows(B, V, seed=V, device=device)
    temperature = torch.tensor([0.0, 1.0, 0.7, 1.3] * 4, device=device)
    top_k = torch.tensor([0, 0, 5, 1, 0, 20, 3, 0, V, 0, 2, 7, 0, 0, 4, 0], dtype=torch.int32, device=device)
    top_p = torch.tensor([1.0, 0.9, 1.0, 1.0, 0.5, 0.95, 1.0, 0.1, 1.0, 0.3, 1.0, 0.8, 0.999, 0.6, 0.9, 1.0],
                         device=device)  # fmt: skip
    tokens = _check_same(logits, keys, temperature, top_k, top_p)
    assert len(set(tokens.tolist())) > 4  # the draws really differ between rows


def test_sample_boundary_ties_and_greedy_ties(device):
    V = 50
    base = torch.arange(V, dtype=torch.float32) % 5  # every value repeated 10 times
    logits = base.repeat(6, 1).to(device)
    keys = torch.arange(24, dtype=torch.int64).view(6, 4).to(device)
    temperature = torch.tensor([0.0, 1.0, 1.0, 0.5, 2.0, 1.0], device=device)
    top_k = torch.tensor([0, 12, 3, 10, 0, 25], dtype=torch.int32, device=device)  # k inside a tie group
    top_p = torch.tensor([1.0, 1.0, 0.5, 1.0, 0.3, 0.7], device=device)
    tokens = _check_same(logits, keys, temperature, top_k, top_p)
    assert tokens[0] == 4  # greedy: lowest id among the maxima
    assert all(int(t) % 5 == 4 for t in tokens[1:4])  # the top-k sets only hold the top tie group


def test_sample_depends_only_on_row_key_and_logits(device):
    logits, keys = _rows(8, 300, seed=5, device=device)
    temperature = torch.full((8,), 1.1, device=device)
    top_k = torch.full((8,), 40, dtype=torch.int32, device=device)
    top_p = torch.full((8,), 0.9, device=device)
    tokens, _ = ops.sample(logits, keys, temperature, top_k, top_p, backend="triton")
    perm = torch.tensor([3, 0, 7, 1, 6, 2, 5, 4], device=device)
    shuffled, _ = ops.sample(logits[perm], keys[perm], temperature, top_k, top_p, backend="triton")
    assert shuffled.tolist() == tokens[perm].tolist()
    other_seed = keys.clone()
    other_seed[:, 0] += 1
    redrawn, _ = ops.sample(logits, other_seed, temperature, top_k, top_p, backend="triton")
    assert redrawn.tolist() != tokens.tolist()


def test_sample_extreme_logits(device):
    logits = torch.tensor([[0.0, float("-inf"), 5.0, -1e30, 5.0], [-2.0, -2.0, -2.0, -2.0, -2.0]], device=device)
    keys = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]], device=device)
    temperature = torch.tensor([0.9, 1.0], device=device)
    top_k = torch.tensor([0, 3], dtype=torch.int32, device=device)
    top_p = torch.tensor([0.95, 0.5], device=device)
    tokens = _check_same(logits, keys, temperature, top_k, top_p)
    assert int(tokens[0]) in (0, 2, 4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu_sample_matches_reference_at_vocabulary_scale(dtype):
    B, V = 64, 151_936
    logits, keys = _rows(B, V, seed=9, device="cuda")
    logits = logits.to(dtype)
    g = torch.Generator().manual_seed(10)
    temperature = (torch.rand(B, generator=g) * 1.5).cuda()
    top_k = torch.randint(0, 200, (B,), generator=g, dtype=torch.int32).cuda()
    top_p = (0.5 + torch.rand(B, generator=g) / 2).cuda()
    _check_same(logits, keys, temperature, top_k, top_p)
