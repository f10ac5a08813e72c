"""Triton paged_attention and shared_prefix_attention against ponder.ops.reference."""

import numpy as np
import pytest
import torch

import ponder.ops as ops
from ponder.attention_plan import plan_attention
from ponder.ops import reference, triton_backend

# fp32: the kernels sum in another order (online softmax over blocks, merges of partials) than
# the reference's single softmax; measured differences on the CPU stay below 1e-6, and on a GPU
# tl.exp2 is an approximation of a few ulp.
FP32_TOL = dict(atol=1e-5, rtol=1e-5)


def _kv(num_pages, S, Hk, D, L=2, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(L, 2, num_pages, S, Hk, D, generator=g).to(dtype=dtype, device=device)


def _decode_batch(forest, seed, S, Hk, G, D, num_roots=2, max_nodes=12, max_step=6, dtype=torch.float32, device="cpu"):
    rng = np.random.default_rng(seed)
    tables, lens, num_pages = forest(rng, S, num_roots, max_nodes, max_step)
    B = len(lens)
    kv = _kv(num_pages + 1, S, Hk, D, dtype=dtype, device=device, seed=seed)
    q = torch.randn(B, Hk * G, D, generator=torch.Generator().manual_seed(seed + 1)).to(dtype=dtype, device=device)
    bt = torch.from_numpy(tables).to(device)
    sl = torch.from_numpy(lens).to(device)
    qi = torch.arange(B + 1, dtype=torch.int32, device=device)
    return q, kv, bt, sl, qi, (tables, lens, num_pages)


@pytest.mark.parametrize("G", [1, 4, 8])
@pytest.mark.parametrize("S,D", [(4, 8), (3, 20)])  # D=20: a head dim that is no power of two
def test_paged_attention_decode_matches_reference(forest, device, G, S, D):
    q, kv, bt, sl, qi, _ = _decode_batch(forest, seed=G * 10 + S, S=S, Hk=2, G=G, D=D, device=device)
    expected = reference.paged_attention(q, kv, 1, bt, sl, qi, D**-0.5)
    out = ops.paged_attention(q, kv, 1, bt, sl, qi, D**-0.5, backend="triton")
    torch.testing.assert_close(out, expected, **FP32_TOL)


@pytest.mark.parametrize("num_splits", [2, 5])
def test_paged_attention_split_kv_merges_partials(forest, device, num_splits):
    q, kv, bt, sl, qi, _ = _decode_batch(forest, seed=num_splits, S=2, Hk=1, G=4, D=8, max_step=9, device=device)
    expected = reference.paged_attention(q, kv, 0, bt, sl, qi, 0.5)
    out = triton_backend.paged_attention(q, kv, 0, bt, sl, qi, 0.5, num_splits=num_splits)
    torch.testing.assert_close(out, expected, **FP32_TOL)


def test_paged_attention_ragged_rows_equal_to_sequences_are_exact(device):
    # T == B but sequence 1 has no query row and sequence 0 has two: the kernel searches rows.
    kv = _kv(6, 3, 2, 8, device=device)
    bt = torch.tensor([[0, 1, 2], [3, -1, -1], [4, 5, -1]], dtype=torch.int32, device=device)
    sl = torch.tensor([8, 2, 6], dtype=torch.int32, device=device)
    qi = torch.tensor([0, 2, 2, 3], dtype=torch.int32, device=device)
    q = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(3)).to(device)
    expected = reference.paged_attention(q, kv, 1, bt, sl, qi, 0.35)
    torch.testing.assert_close(triton_backend.paged_attention(q, kv, 1, bt, sl, qi, 0.35, num_splits=2), expected, **FP32_TOL)


def test_paged_attention_prefill_falls_back_to_reference(device):
    kv = _kv(4, 4, 1, 8, device=device)
    bt = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32, device=device)
    sl = torch.tensor([7, 5], dtype=torch.int32, device=device)
    qi = torch.tensor([0, 3, 5], dtype=torch.int32, device=device)
    q = torch.randn(5, 2, 8, generator=torch.Generator().manual_seed(4)).to(device)
    expected = reference.paged_attention(q, kv, 0, bt, sl, qi, 0.3)
    torch.testing.assert_close(ops.paged_attention(q, kv, 0, bt, sl, qi, 0.3, backend="triton"), expected, **FP32_TOL)


@pytest.mark.parametrize(
    "G,options",
    [
        (1, {}),
        (4, {}),  # wide shared tiles: up to (branches * 4) rows through tl.dot
        (8, {"max_queries_per_item": 2}),  # 16-row tiles
        (4, {"max_pages_per_item": 1, "max_queries_per_item": 3}),
    ],
)
def test_shared_prefix_attention_matches_reference_on_trees(forest, device, G, options):
    q, kv, bt, sl, qi, (tables, lens, num_pages) = _decode_batch(
        forest, seed=7 + G, S=3, Hk=2, G=G, D=8, num_roots=2, max_nodes=14, max_step=5, device=device
    )
    plan = plan_attention(tables, lens, 3, num_pages=num_pages + 1, **options)
    assert plan.num_shared_items > 0 and plan.pages_read() < sum(-(-int(n) // 3) for n in lens)
    expected = reference.paged_attention(q, kv, 1, bt, sl, qi, 0.4)
    out = triton_backend.shared_prefix_attention(q, kv, 1, plan.to(q.device), 0.4)
    torch.testing.assert_close(out, expected, **FP32_TOL)


@pytest.mark.parametrize("G", [1, 2, 4])
def test_shared_prefix_attention_op_runs_the_triton_kernel(forest, device, G):
    q, kv, bt, sl, qi, (tables, lens, _) = _decode_batch(
        forest, seed=20 + G, S=3, Hk=2, G=G, D=12, num_roots=2, max_nodes=12, max_step=5, device=device
    )
    plan = ops.plan_shared_prefix_attention(tables, lens, kv, num_heads=2 * G, backend="triton")
    expected = reference.paged_attention(q, kv, 0, bt, sl, qi, 0.45)
    out = ops.shared_prefix_attention(q, kv, 0, plan, 0.45, backend="triton")
    torch.testing.assert_close(out, expected, **FP32_TOL)
    # the same plan through the reference: both backends read the plan the same way
    torch.testing.assert_close(ops.shared_prefix_attention(q, kv, 0, plan, 0.45, backend="torch"), out, **FP32_TOL)


def test_shared_prefix_attention_op_refuses_a_plan_too_wide_for_the_kernel(device):
    kv = _kv(4, 4, 1, 8, device=device)
    tables, lens = np.zeros((40, 1), dtype=np.int32), np.full(40, 3, dtype=np.int32)
    whole = ops.plan_shared_prefix_attention(tables, lens, kv, num_heads=4, backend="torch")  # 40 x G=4 rows
    q = torch.zeros(40, 4, 8, device=device)
    with pytest.raises(ValueError, match=r"max_queries_per_item <= 32"):
        ops.shared_prefix_attention(q, kv, 0, whole, 0.3, backend="triton")
    split = ops.plan_shared_prefix_attention(tables, lens, kv, num_heads=4, backend="triton")
    expected = ops.shared_prefix_attention(q, kv, 0, whole, 0.3, backend="torch")
    out = ops.shared_prefix_attention(q, kv, 0, split, 0.3, backend="triton")
    torch.testing.assert_close(out, expected, **FP32_TOL)


def test_shared_prefix_attention_refuses_a_mismatched_plan():
    kv = _kv(4, 4, 1, 8)
    plan = plan_attention([[0, 1], [0, 2]], [6, 5], 4).to("cpu")
    with pytest.raises(ValueError, match="q has 3 rows but the plan has 2 queries"):
        triton_backend.shared_prefix_attention(torch.zeros(3, 2, 8), kv, 0, plan, 0.3)
    other = plan_attention([[0, 1], [0, 2]], [4, 3], 2).to("cpu")
    with pytest.raises(ValueError, match="page_size 2"):
        triton_backend.shared_prefix_attention(torch.zeros(2, 2, 8), kv, 0, other, 0.3)
    wide = plan_attention([[0]] * 40, [3] * 40, 4).to("cpu")  # 40 queries x G=4 = 160 rows in one tile
    with pytest.raises(ValueError, match=r"max_queries_per_item <= 32"):
        triton_backend.shared_prefix_attention(torch.zeros(40, 4, 8), kv, 0, wide, 0.3)


def test_shared_prefix_attention_and_paged_attention_agree_on_a_wide_tree(device):
    # 24 branches under one 2-page prompt: the shared item has 24 * 4 = 96 rows.
    S, Hk, G, D = 4, 1, 4, 16
    B = 24
    tables = np.zeros((B, 3), dtype=np.int32)
    tables[:, 1] = 1
    tables[:, 2] = 2 + np.arange(B)
    lens = (9 + np.arange(B) % 4).astype(np.int32)
    kv = _kv(2 + B, S, Hk, D, seed=11, device=device)
    q = torch.randn(B, Hk * G, D, generator=torch.Generator().manual_seed(12)).to(device)
    bt, sl = torch.from_numpy(tables).to(device), torch.from_numpy(lens).to(device)
    qi = torch.arange(B + 1, dtype=torch.int32, device=device)
    expected = reference.paged_attention(q, kv, 0, bt, sl, qi, 0.25)
    plan = plan_attention(tables, lens, S)
    assert plan.max_item_queries == B and plan.pages_read() == 2 + B
    out = triton_backend.shared_prefix_attention(q, kv, 0, plan.to(device), 0.25)
    torch.testing.assert_close(out, expected, **FP32_TOL)
    torch.testing.assert_close(triton_backend.paged_attention(q, kv, 0, bt, sl, qi, 0.25), expected, **FP32_TOL)


# ---- GPU: compiled kernels, 16-bit dtypes ---------------------------------------------------------
# bf16 / fp16: q and K are 16-bit as in the reference, but the kernel also rounds the softmax
# probabilities to 16 bits before the P.V product (the reference keeps them fp32): about 3 bits
# of the 8-bit (bf16) mantissa, so 2e-2 absolute on outputs of magnitude ~1.
GPU_TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
           torch.float16: dict(atol=5e-3, rtol=5e-3)}  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("G,S,D", [(1, 16, 128), (4, 16, 128), (8, 16, 64), (4, 5, 40)])
def test_gpu_paged_attention_and_shared_prefix_attention_match_reference(forest, dtype, G, S, D):
    q, kv, bt, sl, qi, (tables, lens, num_pages) = _decode_batch(
        forest, seed=G + S, S=S, Hk=2, G=G, D=D, num_roots=3, max_nodes=40, max_step=3 * S, dtype=dtype, device="cuda"
    )
    expected = reference.paged_attention(q, kv, 1, bt, sl, qi, D**-0.5)
    torch.testing.assert_close(ops.paged_attention(q, kv, 1, bt, sl, qi, D**-0.5, backend="triton"), expected, **GPU_TOL[dtype])
    torch.testing.assert_close(
        triton_backend.paged_attention(q, kv, 1, bt, sl, qi, D**-0.5, num_splits=3), expected, **GPU_TOL[dtype]
    )
    plan = plan_attention(tables, lens, S, **triton_backend.plan_options(S, G, tokens_per_item=2 * S)).to("cuda")
    out = triton_backend.shared_prefix_attention(q, kv, 1, plan, D**-0.5)
    torch.testing.assert_close(out, expected, **GPU_TOL[dtype])
    for backend in ("triton", "torch"):
        out = ops.shared_prefix_attention(q, kv, 1, plan, D**-0.5, backend=backend)
        torch.testing.assert_close(out, expected, **GPU_TOL[dtype])
