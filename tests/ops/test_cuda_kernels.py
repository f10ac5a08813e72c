"""The CUDA kernels (``ponder.ops.cuda_backend``) against the PyTorch references, on a GPU.

Every case here needs a CUDA device and a build with the kernels; the whole module is skipped
otherwise. The shared-prefix cases reuse the random search trees of
``test_shared_prefix_attention`` (real PageTable forks, NaN in every KV slot no branch owns, so
a read past a branch's tokens shows up as NaN)."""

import numpy as np
import pytest
import torch

import ponder.ops as ops
from ponder.attention_plan import plan_attention
from ponder.ops import _registry, cuda_backend, reference
from ponder.ops._registry import resolve_backend

from test_shared_prefix_attention import HEADS, TREES, grow_tree_batch, make_kv

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda_kernels():
    if not _registry._cuda_kernels_built():
        pytest.skip("ponder was built without its CUDA kernels")


DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _tol(dtype):
    # fp32: both sides compute in fp32 in another order (the kernel's online softmax and
    # log-sum-exp merge vs SDPA), gaps well below 2e-5.
    # 16-bit: the kernel rounds the softmax weights to the cache dtype before P.V (tensor-core
    # operands) and the output to the dtype; both are relative errors of one 16-bit rounding
    # (2^-8 for bf16) of values of order 1, so 2e-2 is a 5x margin.
    return dict(atol=2e-5, rtol=2e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)


def _against_paged(tables, lens, num_pages, used, S, H, Hk, D, dtype, layer=1, seed=0, **plan_options):
    kv = make_kv(num_pages, S, Hk, D, used, dtype, seed=seed)
    B = len(lens)
    q = torch.randn(B, H, D, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    bt, sl = torch.from_numpy(tables), torch.from_numpy(lens)
    # the oracle in fp32 on the CPU, from the same (rounded) inputs
    expected = reference.paged_attention(q.float(), kv.float(), layer, bt, sl, torch.arange(B + 1, dtype=torch.int32),
                                         D**-0.5)  # fmt: skip
    plan = plan_attention(tables, lens, S, num_pages=num_pages, **plan_options).to("cuda")
    out = ops.shared_prefix_attention(q.cuda(), kv.cuda(), layer, plan, D**-0.5, backend="cuda", check=True)
    assert out.dtype == dtype and out.shape == (B, H, D) and out.device.type == "cuda"
    return out.cpu().float(), expected


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("S", [1, 3, 16])
@pytest.mark.parametrize("H,Hk", HEADS)
@pytest.mark.parametrize("tree", list(TREES))
def test_cuda_shared_prefix_attention_matches_paged_attention(tree, H, Hk, S, dtype):
    tables, lens, num_pages, used = grow_tree_batch(seed=len(tree) + S + H, S=S, **TREES[tree])
    G = H // Hk
    out, expected = _against_paged(tables, lens, num_pages, used, S, H, Hk, 64, dtype, **cuda_backend.plan_options(S, G))
    torch.testing.assert_close(out, expected, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [8, 40, 72, 100, 128, 256])
def test_cuda_shared_prefix_attention_odd_head_dims(D, dtype):
    # 100 is not a whole number of 16-byte loads (scalar loads); every D is padded in smem
    tables, lens, num_pages, used = grow_tree_batch(seed=D, S=5, **TREES["forest"])
    out, expected = _against_paged(tables, lens, num_pages, used, 5, 6, 2, D, dtype)
    torch.testing.assert_close(out, expected, **_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "options",
    [dict(), dict(max_pages_per_item=1), dict(max_queries_per_item=2), dict(max_pages_per_item=2, max_queries_per_item=1)],
)
def test_cuda_shared_prefix_attention_on_any_plan(options, dtype):
    # Unbounded items put up to 30 branches x 4 heads = 120 rows in one item: two passes of 64.
    tables, lens, num_pages, used = grow_tree_batch(seed=7, S=4, num_roots=1, max_nodes=40, max_kids=6, max_step=9)
    out, expected = _against_paged(tables, lens, num_pages, used, 4, 8, 2, 64, dtype, **options)
    torch.testing.assert_close(out, expected, **_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_shared_prefix_attention_without_sharing(dtype):
    # Separate prompts: every item has one query (the plan degenerates to per-branch decode).
    rng = np.random.default_rng(3)
    S, B = 4, 9
    lens = rng.integers(1, 40, B).astype(np.int32)
    width = int(-(-lens.max() // S))
    tables = np.full((B, width), -1, dtype=np.int32)
    used, page = [], 0
    for b in range(B):
        n = -(-int(lens[b]) // S)
        tables[b, :n] = np.arange(page, page + n)
        used += [(page * S + t) for t in range(int(lens[b]))]
        page += n
    out, expected = _against_paged(tables, lens, page, np.array(used), S, 9, 3, 64, dtype)
    torch.testing.assert_close(out, expected, **_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_shared_prefix_attention_long_prompt_many_branches(dtype):
    # SmolLM2's heads, a 2,048-token prompt shared by 64 branches of 3-19 own tokens: the
    # prompt splits into 1,024-token items, each read once for up to 21 branches.
    S, P, B, H, Hk, D = 16, 2048, 64, 9, 3, 64
    rng = np.random.default_rng(5)
    own = rng.integers(3, 20, B)
    prefix = P // S
    tables = np.full((B, prefix + 2), -1, dtype=np.int32)
    tables[:, :prefix] = np.arange(prefix)
    used = list(range(P))
    for b in range(B):
        tables[b, prefix : prefix + 2] = prefix + 2 * b + np.arange(2)
        used += [(prefix + 2 * b) * S + t for t in range(int(own[b]))]
    lens = (P + own).astype(np.int32)
    out, expected = _against_paged(tables, lens, prefix + 2 * B, np.array(used), S, H, Hk, D, dtype,
                                   **cuda_backend.plan_options(S, H // Hk))  # fmt: skip
    torch.testing.assert_close(out, expected, **_tol(dtype))


def test_auto_backends_on_gpu():
    kv = torch.zeros(1, 2, 8, 16, 2, 64, device="cuda", dtype=torch.bfloat16)
    # Triton's shared-prefix kernel measured faster (benchmarks/RESULTS.md); CUDA scores
    expected = "triton" if "triton" in ops.available_backends(kv.device) else "cuda"
    assert resolve_backend("auto", kv.device, "shared_prefix_attention") == expected
    assert resolve_backend("auto", kv.device, "value_score") == "cuda"
    assert ops.plan_item_options(kv, 8, backend="cuda") == cuda_backend.plan_options(16, 4) == {
        "max_pages_per_item": 64, "max_queries_per_item": 16}  # fmt: skip


def test_cuda_shared_prefix_attention_refusals():
    kv = torch.zeros(1, 2, 4, 4, 1, 288, device="cuda")
    tables, lens = np.array([[0, 1]], dtype=np.int32), np.array([5], dtype=np.int32)
    plan = plan_attention(tables, lens, 4, num_pages=4).to("cuda")
    q = torch.zeros(1, 2, 288, device="cuda")
    with pytest.raises(ValueError, match="head dims up to 256"):
        ops.shared_prefix_attention(q, kv, 0, plan, 0.1, backend="cuda")
    # a non-contiguous cache (a strided view) is refused before any launch
    wide = torch.zeros(1, 2, 4, 4, 2, 64, device="cuda")[:, :, :, :, :1]
    with pytest.raises(ValueError, match="contiguous"):
        cuda_backend.shared_prefix_attention(torch.zeros(1, 2, 64, device="cuda"), wide, 0, plan, 0.1)


def test_cuda_shared_prefix_attention_writes_out_and_keeps_inputs():
    tables, lens, num_pages, used = grow_tree_batch(seed=11, S=4, **TREES["tree"])
    kv = make_kv(num_pages, 4, 2, 32, used, torch.bfloat16).cuda()
    q = torch.randn(len(lens), 4, 32, device="cuda", dtype=torch.bfloat16)
    kv0, q0 = kv.clone(), q.clone()
    plan = plan_attention(tables, lens, 4, num_pages=num_pages).to("cuda")
    out = torch.full_like(q, float("nan"))
    got = cuda_backend.shared_prefix_attention(q, kv, 1, plan, 32**-0.5, out=out)
    assert got is out and not out.isnan().any()
    assert torch.equal(kv.isnan(), kv0.isnan()) and torch.equal(kv.nan_to_num(), kv0.nan_to_num()) and torch.equal(q, q0)


# ---- value_score ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["last", "min", "prod", "mean"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [1, 7, 576, 2049])
@pytest.mark.parametrize("norm", [False, True])
def test_cuda_value_score_matches_reference(norm, C, dtype, mode):
    g = torch.Generator().manual_seed(C)
    N, M = 13, 9
    hidden = torch.randn(N, C, generator=g).to(dtype)
    weight = (torch.rand(C, generator=g) + 0.5).to(dtype) if norm else None
    direction = torch.randn(C, generator=g) / C**0.5
    rows = torch.randint(0, N, (M,), generator=g)
    parent = torch.rand(M, generator=g)
    depth = torch.randint(1, 5, (M,), generator=g, dtype=torch.int32)
    args = (rows, weight, 1e-5, direction, 0.25, parent, depth, mode)
    score, path = reference.value_score(hidden, *args)
    cuda = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    got_score, got_path = ops.value_score(hidden.cuda(), *cuda, backend="cuda", check=True)
    # fp32 sums in another order over up to 2,049 terms of order 1/sqrt(C): ~1e-6 on the logit;
    # with a 16-bit norm, an element whose fp32 value sits at a rounding boundary can round the
    # other way (one 16-bit step on one term), still far below 1e-3 after the sigmoid
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 or not norm else dict(atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(got_score.cpu(), score, **tol)
    torch.testing.assert_close(got_path.cpu(), path, **tol)


def test_cuda_value_score_strided_hidden_and_empty():
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(6, 40, generator=g)
    hidden = wide[:, 3:35]  # row stride 40, unit column stride
    rows = torch.tensor([5, 0, 2])
    args = (rows, None, 0.0, torch.randn(32, generator=g), 0.0, torch.rand(3), torch.tensor([1, 2, 3], dtype=torch.int32),
            "min")  # fmt: skip
    score, path = reference.value_score(hidden, *args)
    cuda = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    got = ops.value_score(wide.cuda()[:, 3:35], *cuda, backend="cuda")
    torch.testing.assert_close(got[0].cpu(), score, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got[1].cpu(), path, atol=1e-6, rtol=1e-6)
    empty = ops.value_score(hidden.cuda(), torch.zeros(0, dtype=torch.int64, device="cuda"), None, 0.0,
                            torch.zeros(32, device="cuda"), 0.0, torch.zeros(0, device="cuda"),
                            torch.zeros(0, dtype=torch.int32, device="cuda"), "last", backend="cuda")  # fmt: skip
    assert empty[0].shape == (0,) and empty[1].shape == (0,)
