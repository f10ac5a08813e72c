import math

import pytest
import torch
import torch.nn.functional as F

import ponder.ops as ops
from ponder.ops import reference, reference_attention

# fp32: the reference accumulates in fp32, the oracle in fp64; over D <= 64 products and a
# softmax over <= 60 keys the measured gap is below 1e-6, so 2e-5 leaves a wide margin.
# bf16: both read the same bf16 inputs and compute in >= fp32; the gap is the final rounding of
# the output to bf16 (relative step 2**-8 = 0.0039), so 1e-2 covers one rounding step.
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.bfloat16: dict(atol=1e-2, rtol=1e-2)}


def naive_paged_attention(q, kv_cache, layer, block_tables, seq_lens, query_indptr, scale):
    """Per-sequence, per-row, per-head, per-position loops in fp64: the oracle."""
    T, H, D = q.shape
    S, Hk = kv_cache.shape[3], kv_cache.shape[4]
    group = H // Hk
    out = torch.zeros(T, H, D, dtype=torch.float64)
    for b in range(seq_lens.numel()):
        lo, hi = int(query_indptr[b]), int(query_indptr[b + 1])
        n, length = hi - lo, int(seq_lens[b])
        for j in range(n):
            pos = length - n + j
            for h in range(H):
                kvh = h // group
                scores, values = [], []
                for p in range(pos + 1):
                    page, off = int(block_tables[b, p // S]), p % S
                    key = kv_cache[layer, 0, page, off, kvh].double()
                    scores.append(float(q[lo + j, h].double() @ key) * scale)
                    values.append(kv_cache[layer, 1, page, off, kvh].double())
                m = max(scores)
                w = [math.exp(s - m) for s in scores]
                out[lo + j, h] = sum(wi * vi for wi, vi in zip(w, values)) / sum(w)
    return out.to(q.dtype)


def make_case(lens, num_new, S, H, Hk, D, dtype, shared_pages=0, L=2, seed=0):
    """A random cache and block tables for sequences of ``lens`` tokens whose last ``num_new``
    tokens are the query rows; the first ``shared_pages`` pages of every sequence are the same
    pages (forked branches). Unused cache slots hold NaN to prove they are never read."""
    g = torch.Generator().manual_seed(seed)
    B = len(lens)
    pages_per_seq = [max(1, -(-n // S)) for n in lens]
    own = [p - min(p, shared_pages) for p in pages_per_seq]
    P = shared_pages + sum(own) + 3  # a few pages nobody uses
    perm = torch.randperm(P, generator=g).tolist()
    shared, rest = perm[:shared_pages], perm[shared_pages:]
    max_pages = max(pages_per_seq) + 1  # one padding column
    block_tables = torch.full((B, max_pages), -1, dtype=torch.int32)
    kv = torch.full((L, 2, P, S, Hk, D), float("nan"), dtype=dtype)
    for b, n in enumerate(lens):
        mine = [rest.pop() for _ in range(own[b])]
        ids = (shared[: min(pages_per_seq[b], shared_pages)] + mine)[: pages_per_seq[b]]
        block_tables[b, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
        for p in range(n):
            kv[:, :, ids[p // S], p % S] = torch.randn(L, 2, Hk, D, generator=g).to(dtype)
    indptr = torch.zeros(B + 1, dtype=torch.int32)
    indptr[1:] = torch.tensor(num_new, dtype=torch.int32).cumsum(0)
    q = torch.randn(int(indptr[-1]), H, D, generator=g).to(dtype)
    return q, kv, block_tables, torch.tensor(lens, dtype=torch.int32), indptr


SCENARIOS = {
    # name: (seq_lens, query rows per sequence, shared leading pages)
    "decode": ([5, 1, 17, 9, 33], [1, 1, 1, 1, 1], 0),
    "prefill": ([7, 1, 13], [7, 1, 13], 0),
    "prefill_on_cache": ([11, 20, 6], [3, 9, 1], 0),
    "forked_decode": ([18, 21, 17, 26], [1, 1, 1, 1], 1),
    "mixed_with_empty_row_set": ([9, 4, 15], [1, 0, 6], 0),
}

HEADS = [(8, 8), (8, 2), (8, 1)]  # G = 1, 4, 8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("S", [1, 4, 16])
@pytest.mark.parametrize("H,Hk", HEADS)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_paged_attention_matches_naive(scenario, H, Hk, S, dtype):
    lens, new, shared = SCENARIOS[scenario]
    D = 12  # not a power of two
    shared_pages = shared * (16 // S)  # share the first 16 tokens whatever the page size
    q, kv, bt, sl, ip = make_case(lens, new, S, H, Hk, D, dtype, shared_pages=shared_pages)
    scale = D**-0.5
    out = ops.paged_attention(q, kv, 1, bt, sl, ip, scale)
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out, naive_paged_attention(q, kv, 1, bt, sl, ip, scale), **TOL[dtype])


def test_forked_sequences_share_pages():
    # After a fork the two branches' block tables start with the same page ids; the case
    # builder must really have produced that for the forked scenario to mean anything.
    lens, new, _ = SCENARIOS["forked_decode"]
    _, _, bt, _, _ = make_case(lens, new, 4, 8, 2, 12, torch.float32, shared_pages=4)
    assert (bt[:, :4] == bt[0, :4]).all()
    assert len(set(bt[:, 4].tolist())) == len(lens)


@pytest.mark.parametrize("H,Hk", HEADS)
def test_append_then_attend_matches_dense_causal_attention(H, Hk):
    """Prefill 23 tokens through append_kv, then decode 2 more: every output equals plain causal
    attention on the contiguous sequence (an oracle independent of the paged layout)."""
    g = torch.Generator().manual_seed(1)
    S, D, P, n = 4, 16, 13, 25
    kv = torch.full((1, 2, P, S, Hk, D), float("nan"))
    pages = torch.tensor([7, 2, 11, 0, 5, 9, 3], dtype=torch.int32)
    slots = (pages.long()[torch.arange(n) // S] * S + torch.arange(n) % S)
    q = torch.randn(n, H, D, generator=g)
    k = torch.randn(n, Hk, D, generator=g)
    v = torch.randn(n, Hk, D, generator=g)
    bt = pages[None]
    ops.append_kv(kv, 0, k[:23], v[:23], slots[:23])
    out = [ops.paged_attention(q[:23], kv, 0, bt, torch.tensor([23], dtype=torch.int32),
                               torch.tensor([0, 23], dtype=torch.int32), D**-0.5)]
    for t in (23, 24):
        ops.append_kv(kv, 0, k[t : t + 1], v[t : t + 1], slots[t : t + 1])
        out.append(ops.paged_attention(q[t : t + 1], kv, 0, bt, torch.tensor([t + 1], dtype=torch.int32),
                                       torch.tensor([0, 1], dtype=torch.int32), D**-0.5))
    dense = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.repeat_interleave(H // Hk, 1).transpose(0, 1),
        v.repeat_interleave(H // Hk, 1).transpose(0, 1), is_causal=True,
    ).transpose(0, 1)
    # same fp32 arithmetic in a different order: 1e-5 is ~100x the observed gap
    torch.testing.assert_close(torch.cat(out), dense, atol=1e-5, rtol=1e-5)


def test_chunked_rows_and_ungrouped_fallback_agree(monkeypatch):
    """Long prefills are processed in chunks of query rows, and PyTorch < 2.5 takes a path that
    repeats KV heads; both must give the same result as the single-chunk grouped path."""
    q, kv, bt, sl, ip = make_case([37, 30], [30, 12], 4, 8, 2, 12, torch.float32)
    expected = ops.paged_attention(q, kv, 0, bt, sl, ip, 0.3)
    monkeypatch.setattr(reference_attention, "_MAX_SCORE_ELEMENTS", 8 * 2 * 40 * 7)  # 7 rows per chunk
    monkeypatch.setattr(reference_attention, "_SDPA_HAS_GQA", False)
    torch.testing.assert_close(ops.paged_attention(q, kv, 0, bt, sl, ip, 0.3), expected, atol=1e-6, rtol=1e-6)


def test_padding_block_table_entries_are_ignored():
    q, kv, bt, sl, ip = make_case([5, 9], [1, 1], 4, 4, 2, 8, torch.float32)
    expected = ops.paged_attention(q, kv, 0, bt, sl, ip, 0.5)
    bt[0, 2:] = 10**6  # past sequence 0's two pages: garbage must not matter
    torch.testing.assert_close(ops.paged_attention(q, kv, 0, bt, sl, ip, 0.5), expected, atol=0, rtol=0)


@pytest.mark.parametrize("scenario", ["decode", "prefill_on_cache"])
def test_paged_attention_opcheck(scenario):
    lens, new, _ = SCENARIOS[scenario]
    q, kv, bt, sl, ip = make_case(lens, new, 4, 8, 2, 12, torch.float32)
    kv = torch.nan_to_num(kv)  # opcheck compares outputs with NaN-sensitive equality
    torch.library.opcheck(torch.ops.ponder.paged_attention.default, (q, kv, 1, bt, sl, ip, 0.25, "torch"))


def test_empty_query_batch():
    q, kv, bt, sl, ip = make_case([5], [1], 4, 4, 2, 8, torch.float32)
    out = ops.paged_attention(q[:0], kv, 0, bt, sl, torch.zeros(2, dtype=torch.int32), 0.5)
    assert out.shape == (0, 4, 8)


def _bad(**over):
    q, kv, bt, sl, ip = make_case([5, 6], [1, 2], 4, 4, 2, 8, torch.float32)
    args = dict(q=q, kv_cache=kv, layer=1, block_tables=bt, seq_lens=sl, query_indptr=ip, scale=0.5)
    args.update(over)
    return args


@pytest.mark.parametrize(
    "over,exc,match",
    [
        (dict(q=torch.zeros(3, 4)), ValueError, r"q must be a \[T, H, D\]"),
        (dict(q=torch.zeros(3, 3, 8)), ValueError, "not a multiple"),
        (dict(q=torch.zeros(3, 4, 6)), ValueError, "head dim"),
        (dict(q=torch.zeros(3, 4, 8, dtype=torch.int64)), TypeError, "q must be"),
        (dict(layer=2), IndexError, r"layer must lie in \[0, 2\)"),
        (dict(layer=1.0), TypeError, "layer must be an int"),
        (dict(block_tables=torch.zeros(2, 3, dtype=torch.int64)), TypeError, "block_tables must be"),
        (dict(seq_lens=torch.tensor([5], dtype=torch.int32)), ValueError, "block_tables has size 2"),
        (dict(query_indptr=torch.tensor([0, 1, 2], dtype=torch.int32)), ValueError, "query_indptr must be non-decreasing"),
        (dict(query_indptr=torch.tensor([0, 2, 1], dtype=torch.int32)), ValueError, "query_indptr must be non-decreasing"),
        (dict(seq_lens=torch.tensor([5, 1], dtype=torch.int32)), ValueError, r"seq_lens\[1\] = 1 must lie in \[2,"),
        (dict(seq_lens=torch.tensor([5, 99], dtype=torch.int32)), ValueError, r"seq_lens\[1\] = 99"),
        (dict(block_tables=torch.tensor([[0, 1, 2], [3, 50, 0]], dtype=torch.int32)), IndexError,
         r"block_tables\[1, 1\] = 50"),
        (dict(scale="0.5"), TypeError, "scale must be a float"),
        (dict(kv_cache=torch.zeros(2, 2, 4, 4, 2)), ValueError, r"\[L, 2, P, S, Hk, D\]"),
    ],
)
def test_paged_attention_bad_input(over, exc, match):
    args = _bad(**over)
    with pytest.raises(exc, match=match):
        ops.paged_attention(**args)
    # the op is still usable afterwards
    ops.paged_attention(**_bad())


def test_value_checks_can_be_disabled_on_cpu():
    args = _bad(query_indptr=torch.tensor([0, 2, 1], dtype=torch.int32))
    with pytest.raises(ValueError):
        ops.paged_attention(**args, check=True)
    args = _bad(block_tables=torch.tensor([[0, 1, 2], [3, 4, 0]], dtype=torch.int32))
    ops.paged_attention(**args, check=False)  # valid values: no check needed, still runs
