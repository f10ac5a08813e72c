import pytest
import torch

import ponder.ops as ops
from ponder.ops import norm as norm_ops, reference
from ponder.ops._registry import host_implementation, implementation

transformers_llama = pytest.importorskip("transformers.models.llama.modeling_llama")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(7, 96), (2, 3, 5, 37), (1,)])
def test_rms_norm_matches_transformers(shape, dtype):
    g = torch.Generator().manual_seed(0)
    C = shape[-1]
    hf = transformers_llama.LlamaRMSNorm(C, eps=1e-5)
    with torch.no_grad():
        hf.weight.copy_(torch.randn(C, generator=g) + 1)
    hf = hf.to(dtype)
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    out = ops.rms_norm(x, hf.weight.detach(), 1e-5)
    assert out.dtype == dtype and out.shape == x.shape
    # same operations in the same order as LlamaRMSNorm, so equal bit for bit in both dtypes
    torch.testing.assert_close(out, hf(x).detach(), atol=0, rtol=0)


def test_rms_norm_literal():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    out = ops.rms_norm(x, torch.tensor([1.0, 2.0]), 0.0 + 1e-12)
    # rms of [3, 4] is sqrt(12.5); the zero row stays zero thanks to eps
    expected = torch.tensor([[3 / 12.5**0.5, 8 / 12.5**0.5], [0.0, 0.0]])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)  # fp32 rsqrt rounding


def test_rms_norm_fp32_weight_on_bf16_input_keeps_input_dtype():
    x = torch.randn(4, 8).bfloat16()
    out = ops.rms_norm(x, torch.ones(8), 1e-6)
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("weight_dtype", ["same", torch.float32])
@pytest.mark.parametrize("shape", [(7, 96), (2, 3, 5, 37), (1,), (0, 8), (300, 128)])
def test_host_rms_norm_gives_the_reference_bits(shape, dtype, weight_dtype):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    w = (torch.randn(shape[-1], generator=g) + 1).to(dtype if weight_dtype == "same" else weight_dtype)
    before = x.clone()
    host = host_implementation("rms_norm")
    assert host is norm_ops._rms_norm_host and implementation("rms_norm", "auto", "cpu") is host
    out = host(x, w, 1e-5)
    expected = reference.rms_norm(x, w, 1e-5)
    assert out.dtype == expected.dtype == dtype and torch.equal(out, expected)
    assert torch.equal(x, before)  # the in-place steps only touch tensors the call made
    assert torch.equal(ops.rms_norm(x, w, 1e-5), expected)


def test_host_rms_norm_keeps_gradients():
    x = torch.randn(4, 16, requires_grad=True)
    w = torch.randn(16, requires_grad=True)
    out = ops.rms_norm(x, w, 1e-6)
    out.sum().backward()
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    reference.rms_norm(x2, w2, 1e-6).sum().backward()
    assert torch.equal(x.grad, x2.grad) and torch.equal(w.grad, w2.grad)


def test_rms_norm_opcheck():
    torch.library.opcheck(torch.ops.ponder.rms_norm.default, (torch.randn(3, 5, 16), torch.randn(16), 1e-6, "torch"))


@pytest.mark.parametrize(
    "x,w,eps,exc,match",
    [
        (torch.ones(3, 4), torch.ones(5), 1e-6, ValueError, "C, the last dimension of x"),
        (torch.ones(3, 4), torch.ones(1, 4), 1e-6, ValueError, r"weight must be a \[C\] float"),
        (torch.ones(3, 4, dtype=torch.int64), torch.ones(4), 1e-6, TypeError, "x must be"),
        (torch.tensor(1.0), torch.ones(1), 1e-6, ValueError, "at least one dimension"),
        (torch.ones(3, 4), torch.ones(4), -1.0, ValueError, "eps must be a non-negative"),
        (torch.ones(3, 4), torch.ones(4), "1e-6", ValueError, "eps must be a non-negative"),
        ([1.0, 2.0], torch.ones(2), 1e-6, TypeError, "x must be"),
    ],
)
def test_rms_norm_bad_input(x, w, eps, exc, match):
    with pytest.raises(exc, match=match):
        ops.rms_norm(x, w, eps)
