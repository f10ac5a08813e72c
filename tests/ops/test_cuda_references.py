"""The torch backend is also the CUDA fallback until kernels land: it must give the CPU results
on CUDA tensors (same ops, different device)."""

import pytest
import torch

import ponder.ops as ops

pytestmark = pytest.mark.gpu


def _to(args, device):
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


def test_paged_attention_and_append_kv_on_cuda_match_cpu():
    g = torch.Generator().manual_seed(0)
    S, Hk, D, H = 4, 2, 16, 8
    kv = torch.randn(2, 2, 9, S, Hk, D, generator=g)
    k, v = torch.randn(3, Hk, D, generator=g), torch.randn(3, Hk, D, generator=g)
    slots = torch.tensor([13, -1, 30])
    attn_args = (torch.randn(4, H, D, generator=g), kv, 1, torch.tensor([[3, 0, 5], [7, 8, 2]], dtype=torch.int32),
                 torch.tensor([7, 11], dtype=torch.int32), torch.tensor([0, 1, 4], dtype=torch.int32), 0.25)
    kv_gpu = kv.cuda()
    ops.append_kv(kv, 1, k, v, slots)
    ops.append_kv(kv_gpu, 1, k.cuda(), v.cuda(), slots.cuda(), check=True)
    assert torch.equal(kv_gpu.cpu(), kv)
    out = ops.paged_attention(*attn_args)
    out_gpu = ops.paged_attention(*_to(attn_args, "cuda")[:1], kv_gpu, *_to(attn_args[2:], "cuda"), check=True)
    # different fp32 kernels (CPU vs CUDA SDPA): summation order only
    torch.testing.assert_close(out_gpu.cpu(), out, atol=1e-5, rtol=1e-5)


def test_rms_norm_rotary_sample_on_cuda_match_cpu():
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(5, 24, generator=g), torch.randn(24, generator=g)
    # elementwise fp32 work; reductions may differ in the last bit between devices
    torch.testing.assert_close(ops.rms_norm(x.cuda(), w.cuda(), 1e-6).cpu(), ops.rms_norm(x, w, 1e-6), atol=1e-6, rtol=1e-6)
    rot_args = (torch.randn(5, 4, 8, generator=g), torch.randn(5, 2, 8, generator=g), torch.tensor([0, 3, 9, 2, 1]),
                ops.rope_cache(8, 10, 10000.0))
    for a, b in zip(ops.rotary(*_to(rot_args, "cuda")), ops.rotary(*rot_args)):
        torch.testing.assert_close(a.cpu(), b, atol=1e-6, rtol=1e-6)  # same products, fused or not
    B, V = 64, 1000
    sample_args = (torch.randn(B, V, generator=g) * 3, torch.randint(0, 2**40, (B, 4), generator=g),
                   torch.full((B,), 0.8), torch.tensor([0, 20] * 32, dtype=torch.int32), torch.tensor([1.0, 0.9] * 32))
    tok_gpu, lp_gpu = ops.sample(*_to(sample_args, "cuda"), check=True)
    tok, lp = ops.sample(*sample_args)
    # the uniforms are bit-identical; a token can only differ on an fp32 near-tie of the
    # perturbed scores, which 64 random rows do not produce
    assert torch.equal(tok_gpu.cpu(), tok)
    torch.testing.assert_close(lp_gpu.cpu(), lp, atol=1e-5, rtol=1e-5)
