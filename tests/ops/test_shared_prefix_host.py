"""The native CPU shared-prefix attention (``ponder._core.shared_prefix_attention_cpu``): the fixed
head-dim paths against the reference, refused plans, and the host dispatch."""

import numpy as np
import pytest
import torch

import ponder.ops as ops
from ponder import _core
from ponder.attention_plan import plan_attention
from ponder.ops import attention, reference

# fp32: both compute in fp32 in another order (online softmax over 32-token blocks and a
# log-sum-exp merge vs one softmax); measured gaps stay below 2e-6, 2e-5 is a margin.
# bf16 rows: both read the same bf16 K/V and q; outputs differ by at most the final rounding to
# bf16, one step of 2**-7 relative, inside 1e-2 * (1 + |x|).
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.bfloat16: dict(atol=1e-2, rtol=1e-2)}


def forked_batch(B, prompt, tail, H, Hk, D, S, dtype, seed=0):
    """B branches forked from one prompt of ``prompt`` tokens, each with ``tail`` tokens of its
    own (its decode token included); pages of the pool in shuffled order, NaN in unused slots."""
    gen = torch.Generator().manual_seed(seed)
    full = prompt // S  # the prompt's full pages are shared; a partial last page is copied per branch
    own = -(-(prompt - full * S + tail) // S)
    P = full + B * own + 2
    perm = torch.randperm(P, generator=gen).numpy().astype(np.int32)
    tables = np.full((B, full + own), -1, dtype=np.int32)
    tables[:, :full] = perm[:full]
    tables[:, full:] = perm[full:full + B * own].reshape(B, own)
    lens = np.full(B, prompt + tail, dtype=np.int32)
    kv = torch.full((2, 2, P, S, Hk, D), float("nan"))
    for b in range(B):
        for t in range(int(lens[b])):
            page, off = tables[b, t // S], t % S
            kv[:, :, page, off] = torch.randn(2, 2, Hk, D, generator=gen)
    q = torch.randn(B, H, D, generator=gen)
    return q.to(dtype), kv.to(dtype), tables, lens


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("D", [32, 64, 128, 80])  # the three fixed paths and a run-time one
def test_native_fixed_head_dims_match_reference(D, dtype):
    q, kv, tables, lens = forked_batch(B=6, prompt=70, tail=5, H=6, Hk=2, D=D, S=16, dtype=dtype, seed=D)
    plan = plan_attention(tables, lens, 16, num_pages=kv.shape[2]).to("cpu")
    assert plan.num_shared_items == 1
    out = attention._shared_prefix_attention_native(q, kv, 1, plan, D**-0.5)
    bt, sl = torch.from_numpy(tables), torch.from_numpy(lens)
    expected = reference.paged_attention(q, kv, 1, bt, sl, torch.arange(len(lens) + 1, dtype=torch.int32), D**-0.5)
    assert out.dtype == dtype
    torch.testing.assert_close(out, expected, **TOL[dtype])


def test_native_long_shared_prompt_smollm2_heads():
    """64 branches under a 2,048-token prompt with SmolLM2's heads: one item of 192 rows per KV
    head, read in 64 blocks of 32 tokens, and 64 one-page tails."""
    q, kv, tables, lens = forked_batch(B=64, prompt=2048, tail=3, H=9, Hk=3, D=64, S=16, dtype=torch.float32)
    plan = plan_attention(tables, lens, 16, num_pages=kv.shape[2]).to("cpu")
    out = attention._shared_prefix_attention_native(q, kv, 0, plan, 0.125)
    expected = reference.shared_prefix_attention(q, kv, 0, plan, 0.125)
    torch.testing.assert_close(out, expected, **TOL[torch.float32])


def test_native_query_without_items_gets_zeros():
    # Query 1 is in no item: the kernels' convention (and the reference's) is a zero row.
    q = torch.randn(2, 2, 8)
    kv = torch.randn(1, 2, 3, 4, 1, 8)
    i32 = lambda v: torch.tensor(v, dtype=torch.int32)  # noqa: E731
    out = torch.empty(2, 2, 8)
    _core.shared_prefix_attention_cpu(q.data_ptr(), 2, 2, 8, kv[0, 0].data_ptr(), kv[0, 1].data_ptr(), 0, 1, 4, 3,
                                      (a := i32([0, 2])).data_ptr(), (b := i32([2, 0])).data_ptr(),
                                      (c := i32([6])).data_ptr(), 1, 2, (d := i32([0, 1])).data_ptr(),
                                      (e := i32([0])).data_ptr(), 1, 0.5, out.data_ptr())
    del a, b, c, d, e
    assert torch.equal(out[1], torch.zeros(2, 8))
    # query 0 attends to 6 tokens: page 2, then the first two slots of page 0
    k = torch.cat([kv[0, 0, 2], kv[0, 0, 0, :2]]).squeeze(1)  # [6, 8]
    v = torch.cat([kv[0, 1, 2], kv[0, 1, 0, :2]]).squeeze(1)
    expected = torch.softmax(0.5 * q[0] @ k.T, dim=-1) @ v
    torch.testing.assert_close(out[0], expected, **TOL[torch.float32])


def _small_case():
    tables = np.array([[0, 1], [0, 2]], dtype=np.int32)
    kv = torch.randn(2, 2, 3, 4, 2, 8)
    return torch.randn(2, 4, 8), kv, plan_attention(tables, [6, 5], 4).to("cpu")


@pytest.mark.parametrize("name,values,error,match", [
    ("item_pages", [0, 1, 7], IndexError, r"plan.item_pages\[2\] = 7 must be a page id in \[0, 3\)"),
    ("item_pages", [0, -1, 2], IndexError, r"plan.item_pages\[1\] = -1"),
    ("item_queries", [0, 1, 0, 5], IndexError, r"plan.item_queries\[3\] = 5 must be a query row in \[0, 2\)"),
    ("item_num_tokens", [4, 2, 9], ValueError, r"plan.item_num_tokens\[2\] = 9 must lie in \[1, 4\]"),
    ("item_num_tokens", [4, 0, 1], ValueError, r"plan.item_num_tokens\[1\] = 0"),
    ("item_page_indptr", [0, 2, 1, 3], ValueError, r"plan.item_page_indptr must be non-decreasing"),
    ("item_query_indptr", [0, 2, 3, 9], ValueError, r"plan.item_query_indptr must run from 0 to 4"),
    ("item_page_indptr", [0, 1, 2], ValueError, r"must have 4 entries"),
])  # fmt: skip
def test_native_refuses_bad_plans_before_reading(name, values, error, match):
    q, kv, plan = _small_case()
    assert plan.item_pages.tolist() == [0, 1, 2] and plan.item_queries.tolist() == [0, 1, 0, 1]
    bad = plan._replace(**{name: torch.tensor(values, dtype=torch.int32)})
    with pytest.raises(error, match=match):
        attention._shared_prefix_attention_native(q, kv, 0, bad, 0.3)
    # the public op with value checks off still reaches the kernel's checks
    with pytest.raises((IndexError, ValueError)):
        ops.shared_prefix_attention(q, kv, 0, bad, 0.3, check=False)


def test_native_refuses_other_cache_dtypes():
    q, kv, plan = _small_case()
    with pytest.raises(ValueError, match="float32 / bfloat16"):
        attention._shared_prefix_attention_native(q.half(), kv.half(), 0, plan, 0.3)


def test_host_dispatch_native_for_fp32_and_bf16_reference_for_fp16(monkeypatch):
    calls = []
    native = attention._shared_prefix_attention_native
    monkeypatch.setattr(attention, "_shared_prefix_attention_native",
                        lambda *a: calls.append("native") or native(*a))  # fmt: skip
    # few rows per item (8 branches x G = 3) and many (40 x 3): native for both
    for B in (8, 40):
        q, kv, tables, lens = forked_batch(B=B, prompt=40, tail=2, H=9, Hk=3, D=16, S=8, dtype=torch.float32)
        plan = ops.plan_shared_prefix_attention(tables, lens, kv, num_heads=9)
        out = ops.shared_prefix_attention(q, kv, 0, plan, 0.25)
        torch.testing.assert_close(out, reference.shared_prefix_attention(q, kv, 0, plan, 0.25), **TOL[torch.float32])
    assert calls == ["native", "native"]
    q, kv, tables, lens = forked_batch(B=3, prompt=20, tail=2, H=4, Hk=2, D=16, S=8, dtype=torch.bfloat16)
    plan = ops.plan_shared_prefix_attention(tables, lens, kv, num_heads=4)
    ops.shared_prefix_attention(q, kv, 0, plan, 0.25)
    assert calls == ["native"] * 3
    calls.clear()
    # fp16 caches always run the reference
    q, kv, tables, lens = forked_batch(B=2, prompt=20, tail=2, H=4, Hk=2, D=16, S=8, dtype=torch.float16)
    plan = ops.plan_shared_prefix_attention(tables, lens, kv, num_heads=4)
    ops.shared_prefix_attention(q, kv, 0, plan, 0.25)
    assert calls == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_same_bits_at_any_thread_count(dtype):
    # 24 branches under 256 tokens: large enough for the kernel to split the branches over threads
    q, kv, tables, lens = forked_batch(B=24, prompt=256, tail=3, H=9, Hk=3, D=64, S=16, dtype=dtype)
    plan = ops.plan_shared_prefix_attention(tables, lens, kv, num_heads=9)
    old = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(attention._shared_prefix_attention_native(q, kv, 0, plan, 0.125))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    torch.testing.assert_close(outs[0].float(), reference.shared_prefix_attention(q, kv, 0, plan, 0.125).float(),
                               **TOL[dtype])
