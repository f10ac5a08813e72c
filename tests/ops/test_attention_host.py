"""The native CPU paged attention (``ponder._core.paged_attention_cpu``) against the reference."""

import numpy as np
import pytest
import torch

import ponder.ops as ops
from ponder import _core
from ponder.ops import attention, reference
from ponder.ops._registry import host_implementation

# Both compute in fp32 and differ only in summation order (and the native exp polynomial,
# about 1 ulp): over <= 2,048 keys the measured gap is below 1e-6; 1e-5 leaves a margin.
TOL = dict(atol=1e-5, rtol=1e-5)


def paged_batch(gen, lens, num_q, H, Hk, D, S, extra_pages=3, dtype=torch.float32):
    """Random KV cache and block tables for sequences of ``lens`` tokens, the last ``num_q[b]``
    of each being its query rows; pages are shuffled over the pool and padding is -1."""
    B = len(lens)
    width = max(-(-n // S) for n in lens) + 1
    P = sum(-(-n // S) for n in lens) + extra_pages
    kv = torch.randn(2, 2, P, S, Hk, D, generator=gen).to(dtype)
    perm = torch.randperm(P, generator=gen).tolist()
    tables = torch.full((B, width), -1, dtype=torch.int32)
    for b, n in enumerate(lens):
        for i in range(-(-n // S)):
            tables[b, i] = perm.pop()
    indptr = torch.zeros(B + 1, dtype=torch.int32)
    indptr[1:] = torch.cumsum(torch.tensor(num_q), 0)
    q = torch.randn(int(indptr[-1]), H, D, generator=gen).to(dtype)
    return q, kv, 1, tables, torch.tensor(lens, dtype=torch.int32), indptr, D ** -0.5


CASES = [  # lens, num_q, H, Hk, D, S
    ([37, 5, 64], [1, 1, 1], 4, 2, 32, 16),  # decode, GQA 2
    ([1, 2, 3, 17], [1, 1, 1, 1], 9, 3, 64, 16),  # SmolLM2 heads, a one-token sequence
    ([50, 20], [7, 20], 4, 4, 16, 4),  # prefill on a cached prefix, and a whole prompt
    ([33, 9], [0, 3], 2, 1, 48, 3),  # a sequence without rows, odd page size and head dim
    ([40], [1], 8, 1, 8, 1),  # page size 1, MQA
    ([2048, 2047, 1500], [1, 1, 1], 9, 3, 64, 16),  # long decode
    ([29, 64, 3], [1, 1, 2], 8, 2, 128, 16),  # head dim 128, 4 query heads per KV head (3 + 1)
    ([23, 8], [1, 1], 10, 2, 64, 8),  # 5 query heads per KV head (3 + 2)
    ([19, 1], [1, 1], 2, 2, 32, 16),  # one query head per KV head
]


@pytest.mark.parametrize("lens,num_q,H,Hk,D,S", CASES)
def test_native_matches_reference(lens, num_q, H, Hk, D, S):
    gen = torch.Generator().manual_seed(len(lens) * 1000 + D)
    args = paged_batch(gen, lens, num_q, H, Hk, D, S)
    host = host_implementation("paged_attention")
    assert host is attention._paged_attention_host
    out = host(*args)
    torch.testing.assert_close(out, reference.paged_attention(*args), **TOL)
    # the public op on CPU with the default backend runs the same native code
    torch.testing.assert_close(ops.paged_attention(*args), out, rtol=0, atol=0)


@pytest.mark.parametrize("D", [64, 48])  # the fixed-size and the run-time head-dim paths
def test_rows_split_over_threads_give_the_same_bits(D):
    """A call large enough to split its rows over threads gives every row the bits of one thread,
    prefill rows included (a sequence's rows may fall into two runs)."""
    gen = torch.Generator().manual_seed(11)
    args = paged_batch(gen, [700, 650, 300, 820, 512, 64, 900], [1, 5, 1, 3, 1, 2, 1], 9, 3, D, 16)
    q, kv, layer, tables, lens, indptr, scale = args
    T, H, _ = q.shape
    _, _, P, S, Hk, _ = kv.shape
    outs = []
    for threads in (1, 2, 3, 5):
        out = torch.empty_like(q)
        plane = kv[layer]
        _core.paged_attention_cpu(q.data_ptr(), T, H, D, plane[0].data_ptr(), plane[1].data_ptr(), 0, Hk, S,
                                  tables.data_ptr(), tables.shape[0], tables.shape[1], lens.data_ptr(),
                                  indptr.data_ptr(), P, scale, out.data_ptr(), threads)
        outs.append(out)
    for out in outs[1:]:
        assert torch.equal(out, outs[0])
    torch.testing.assert_close(outs[0], reference.paged_attention(*args), **TOL)


def test_branches_share_pages_and_finish_mid_page():
    """Forked branches: every row reads the shared prefix pages plus its own partial tail."""
    gen = torch.Generator().manual_seed(7)
    S, Hk, D, H = 4, 2, 16, 4
    kv = torch.randn(1, 2, 12, S, Hk, D, generator=gen)
    tables = torch.tensor([[0, 1, 2, 5], [0, 1, 3, 0], [0, 1, 4, 6], [0, 7, 0, 0]], dtype=torch.int32)
    lens = torch.tensor([13, 9, 14, 5], dtype=torch.int32)
    q = torch.randn(4, H, D, generator=gen)
    args = (q, kv, 0, tables, lens, torch.arange(5, dtype=torch.int32), D ** -0.5)
    torch.testing.assert_close(attention._paged_attention_host(*args), reference.paged_attention(*args), **TOL)


# bf16: both read the same bf16 K/V and q and compute in fp32; the outputs differ by at most
# the final rounding to bf16 (2**-7 relative), inside 1e-2 * (1 + |x|).
TOL_BF16 = dict(atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("lens,num_q,H,Hk,D,S", CASES)
def test_native_reads_bf16_caches(lens, num_q, H, Hk, D, S):
    gen = torch.Generator().manual_seed(len(lens) * 1000 + D + 1)
    args = paged_batch(gen, lens, num_q, H, Hk, D, S, dtype=torch.bfloat16)
    out = attention._paged_attention_host(*args)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, reference.paged_attention(*args), **TOL_BF16)
    # fp32 queries over a bf16 cache (the kernel's own input) agree with the widened cache
    q, kv, *rest = args
    out32 = attention._paged_attention_host(q.float(), kv, *rest)
    torch.testing.assert_close(out32, reference.paged_attention(q.float(), kv.float(), *rest), **TOL)


def test_other_dtypes_and_long_prefills_run_the_reference():
    gen = torch.Generator().manual_seed(3)
    args = paged_batch(gen, [30, 12], [1, 1], 4, 2, 16, 4, dtype=torch.float16)
    assert torch.equal(attention._paged_attention_host(*args), reference.paged_attention(*args))
    n = 600  # 600 * 601 / 2 row-key pairs, over NATIVE_MAX_PREFILL_PAIRS
    assert n * (n + 1) // 2 > attention.NATIVE_MAX_PREFILL_PAIRS
    args = paged_batch(gen, [n], [n], 2, 1, 16, 16)
    assert torch.equal(attention._paged_attention_host(*args), reference.paged_attention(*args))


def test_bad_metadata_raises_before_reading():
    gen = torch.Generator().manual_seed(5)
    q, kv, layer, tables, lens, indptr, scale = paged_batch(gen, [10, 6], [1, 1], 4, 2, 16, 4)
    bad = tables.clone()
    bad[1, 0] = kv.shape[2]  # a page past the pool
    with pytest.raises(IndexError, match=r"block_tables\[1, 0\]"):
        attention._paged_attention_host(q, kv, layer, bad, lens, indptr, scale)
    with pytest.raises(ValueError, match=r"seq_lens\[0\] = 99"):
        attention._paged_attention_host(q, kv, layer, tables, torch.tensor([99, 6], dtype=torch.int32), indptr, scale)
    with pytest.raises(ValueError, match="query_indptr"):
        attention._paged_attention_host(q, kv, layer, tables, lens, torch.tensor([0, 2, 1], dtype=torch.int32), scale)


def test_core_checks_heads():
    out = torch.empty(1, 3, 4)
    q = torch.zeros(1, 3, 4)
    z = np.zeros(4, dtype=np.int32)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        _core.paged_attention_cpu(q.data_ptr(), 1, 3, 4, q.data_ptr(), q.data_ptr(), 0, 2, 1, z.ctypes.data, 1, 1,
                                  z.ctypes.data, z.ctypes.data, 1, 0.5, out.data_ptr())
    with pytest.raises(ValueError, match="kv_type must be 0"):
        _core.paged_attention_cpu(q.data_ptr(), 1, 3, 4, q.data_ptr(), q.data_ptr(), 5, 3, 1, z.ctypes.data, 1, 1,
                                  z.ctypes.data, z.ctypes.data, 1, 0.5, out.data_ptr())
