"""Hand-built PageTable cases with literal expected results (P pages of S tokens each)."""

import threading

import numpy as np
import pytest

from ponder import _core
from ponder.page_table import KVCacheFull, PageTable


def _snapshot(pt):
    live = [int(s) for s in pt.live_seqs()]
    tables, lengths = pt.batch_tables(live)
    return (
        pt.stats(), pt.refcounts().tolist(), pt.free_pages().tolist(), pt.evictable_pages().tolist(), live,
        tables.tolist(), lengths.tolist(),
    )


def test_allocate_hands_out_pages_in_order():
    pt = PageTable(8, 4)
    seq, cached, slots = pt.allocate(list(range(10)))
    assert (seq, cached) == (0, 0)
    assert slots.dtype == np.int64 and slots.tolist() == list(range(10))
    assert pt.pages(seq).tolist() == [0, 1, 2] and pt.num_tokens(seq) == 10
    seq2, cached2, slots2 = pt.allocate(np.array([7, 7, 7], dtype=np.int64))
    assert (seq2, cached2, slots2.tolist()) == (1, 0, [12, 13, 14])
    assert pt.slot_of(seq, 9) == 9 and pt.slot_of(seq2, 2) == 14


def test_fork_shares_every_page():
    pt = PageTable(8, 4)
    a, _, _ = pt.allocate([1, 2, 3, 4, 5, 6])
    b = pt.fork(a)
    assert b == 1 and pt.pages(b).tolist() == [0, 1] and pt.num_tokens(b) == 6
    assert pt.refcounts().tolist() == [2, 2, 0, 0, 0, 0, 0, 0]
    assert (pt.stats()["used"], pt.stats()["shared"]) == (2, 2)
    pt.free(a)
    assert pt.refcounts().tolist()[:2] == [1, 1] and pt.stats()["shared"] == 0


def test_fork_many_and_free_many():
    pt = PageTable(8, 4)
    a, _, _ = pt.allocate([1, 2, 3, 4, 5])
    b, _, _ = pt.allocate([9])
    children = pt.fork_many([a, a, b])
    assert children.dtype == np.int32 and children.tolist() == [2, 3, 4]
    assert pt.refcounts().tolist()[:3] == [3, 3, 2]
    before = _snapshot(pt)
    with pytest.raises(ValueError, match=r"seqs\[2\]=2 is listed more than once"):
        pt.free_many([2, 3, 2])
    with pytest.raises(ValueError, match=r"seqs\[1\]=9 is not a sequence"):
        pt.fork_many([a, 9])
    assert _snapshot(pt) == before
    pt.free_many(children)
    assert pt.refcounts().tolist()[:3] == [1, 1, 1] and pt.live_seqs().tolist() == [a, b]
    assert pt.fork_many([]).tolist() == []


def test_copy_on_write_at_partial_shared_last_page():
    pt = PageTable(8, 4)
    a, _, _ = pt.allocate([5, 6, 7, 8, 9, 10])  # pages [0, 1], page 1 half full
    b = pt.fork(a)
    slots, src, dst = pt.append([a, b], [1, 1], [11, 12])
    # a copies page 1 to fresh page 2 and writes slot 2*4+2; b, now sole holder, writes in place.
    assert slots.tolist() == [10, 6] and src.tolist() == [1] and dst.tolist() == [2]
    assert src.dtype == np.int32 and dst.dtype == np.int32
    assert pt.pages(a).tolist() == [0, 2] and pt.pages(b).tolist() == [0, 1]
    assert pt.refcounts().tolist()[:3] == [2, 1, 1]


def test_copy_on_write_three_holders_last_one_keeps_page():
    pt = PageTable(8, 4)
    a, _, _ = pt.allocate([1, 2, 3, 4, 5])
    b, c = pt.fork(a), pt.fork(a)
    slots, src, dst = pt.append([c, a, b], [2, 1, 1])
    assert src.tolist() == [1, 1] and dst.tolist() == [2, 3]
    assert slots.tolist() == [9, 10, 13, 5]
    assert [pt.pages(s).tolist() for s in (a, b, c)] == [[0, 3], [0, 1], [0, 2]]


def test_no_copy_when_last_page_is_full():
    pt = PageTable(8, 4)
    a, _, _ = pt.allocate(list(range(8)))
    b = pt.fork(a)
    slots, src, dst = pt.append([a, b], [1, 1])
    assert slots.tolist() == [8, 12] and src.size == 0 and dst.size == 0
    assert pt.pages(a).tolist() == [0, 1, 2] and pt.pages(b).tolist() == [0, 1, 3]


def test_no_copy_when_last_page_is_unshared():
    pt = PageTable(8, 4)
    a, _, _ = pt.allocate([1, 2, 3])
    slots, src, _ = pt.append([a], [6], [4, 5, 6, 7, 8, 9])
    assert slots.tolist() == [3, 4, 5, 6, 7, 8] and src.size == 0
    assert pt.pages(a).tolist() == [0, 1, 2] and pt.num_tokens(a) == 9


def test_append_zero_count_is_a_noop():
    pt = PageTable(4, 2)
    a, _, _ = pt.allocate([1])
    b = pt.fork(a)
    before = _snapshot(pt)
    slots, src, _ = pt.append([a, b], [0, 0], [])
    assert slots.size == 0 and src.size == 0 and _snapshot(pt) == before


def test_prefix_hit_after_free():
    pt = PageTable(8, 4)
    tokens = list(range(10, 20))
    a, cached, _ = pt.allocate(tokens)
    assert cached == 0 and pt.stats()["prefix_queries"] == 1 and pt.stats()["cached"] == 2
    pt.free(a)
    # Released last page first: the partial page 2 is free, cached pages 1 then 0 are evictable.
    assert pt.evictable_pages().tolist() == [1, 0] and pt.free_pages().tolist()[:2] == [2, 3]
    b, cached, slots = pt.allocate(tokens)
    assert (b, cached, slots.tolist()) == (1, 8, [8, 9])
    assert pt.pages(b).tolist() == [0, 1, 2]
    st = pt.stats()
    assert (st["prefix_queries"], st["prefix_hits"], st["evictable"]) == (3, 2, 0)


def test_last_token_is_never_served_from_cache():
    pt = PageTable(8, 4)
    tokens = [3, 1, 4, 1, 5, 9, 2, 6]  # exactly two full pages
    a, _, _ = pt.allocate(tokens)
    pt.free(a)
    b, cached, slots = pt.allocate(tokens)
    assert cached == 4 and slots.tolist() == [8, 9, 10, 11]  # page 1 could not hit: it holds the last token
    # Page 2 repeats page 1's content, which stays the cached copy.
    assert pt.is_cached(1) and not pt.is_cached(2) and pt.evictable_pages().tolist() == [1]
    pt.free(b)
    _, cached, _ = pt.allocate(tokens + [5])
    assert cached == 8


def test_lru_evicts_least_recently_released_cached_page():
    pt = PageTable(4, 2)
    a, _, _ = pt.allocate([1, 2, 3])  # pages [0, 1]; page 0 cached
    b, _, _ = pt.allocate([5, 6, 7])  # pages [2, 3]; page 2 cached
    pt.free(a)
    pt.free(b)
    assert pt.evictable_pages().tolist() == [0, 2] and pt.free_pages().tolist() == [3, 1]
    c, cached, slots = pt.allocate([9, 9, 9, 9, 9])  # 3 pages: free 3, 1, then evicts 0
    assert cached == 0 and slots.tolist() == [6, 7, 2, 3, 0]
    assert not pt.is_cached(0) and pt.evictable_pages().tolist() == [2]
    pt.free(c)
    assert pt.allocate([5, 6, 8])[1] == 2
    assert pt.allocate([1, 2, 3])[1] == 0


def test_hit_refreshes_lru_position():
    pt = PageTable(6, 2)
    a, _, _ = pt.allocate([1, 1, 0])
    b, _, _ = pt.allocate([2, 2, 0])
    pt.free(a)
    pt.free(b)
    assert pt.evictable_pages().tolist() == [0, 2]
    c, cached, _ = pt.allocate([1, 1, 5])
    assert cached == 2 and pt.evictable_pages().tolist() == [2]
    pt.free(c)
    assert pt.evictable_pages().tolist() == [2, 0]


def test_cached_chain_is_evicted_from_its_tail():
    pt = PageTable(4, 4)
    a, _, _ = pt.allocate(list(range(12)))
    pt.free(a)
    assert pt.evictable_pages().tolist() == [2, 1, 0]


def test_siblings_writing_the_same_page_share_one_cache_entry():
    pt = PageTable(6, 2)
    a, _, _ = pt.allocate([1])
    b = pt.fork(a)
    _, src, dst = pt.append([a, b], [1, 1], [2, 2])
    assert (src.tolist(), dst.tolist()) == ([0], [1])
    assert pt.is_cached(1) and not pt.is_cached(0) and pt.stats()["cached"] == 1
    pt.append([a, b], [2, 2], [3, 4, 3, 4])  # the next pages chain onto the shared entry
    assert pt.stats()["cached"] == 2
    pt.free(a)
    pt.free(b)
    _, cached, _ = pt.allocate([1, 2, 3, 4, 0])
    assert cached == 4


def test_append_without_tokens_stops_caching_that_sequence():
    pt = PageTable(8, 4)
    a, _, _ = pt.allocate([1, 2, 3])
    pt.append([a], [1])
    pt.append([a], [4], [5, 6, 7, 8])
    assert pt.stats()["cached"] == 0
    b, _, _ = pt.allocate([1, 2, 3])
    pt.append([b], [5], [4, 5, 6, 7, 8])
    assert pt.is_cached(pt.pages(b)[0]) and pt.is_cached(pt.pages(b)[1]) and pt.stats()["cached"] == 2


def test_prefix_cache_off_never_hits():
    pt = PageTable(8, 4, prefix_cache=False)
    a, _, _ = pt.allocate(list(range(9)))
    pt.free(a)
    assert pt.free_pages().tolist()[:3] == [0, 1, 2]
    _, cached, _ = pt.allocate(list(range(9)))
    st = pt.stats()
    assert cached == 0 and (st["cached"], st["evictable"], st["prefix_queries"]) == (0, 0, 0)


def test_kv_cache_full_leaves_state_unchanged():
    pt = PageTable(4, 2)
    a, _, _ = pt.allocate([1, 2, 3, 4, 5])  # 3 pages, one left
    before = _snapshot(pt)
    with pytest.raises(KVCacheFull, match=r"allocate needs 2 new pages but only 1 free \+ 0 evictable.*4 pages in total"):
        pt.allocate([7, 8, 9])
    assert _snapshot(pt) == before
    with pytest.raises(KVCacheFull, match="append needs 2 new pages"):
        pt.append([a], [4], [6, 7, 8, 9])
    assert _snapshot(pt) == before
    b = pt.fork(a)
    before = _snapshot(pt)
    with pytest.raises(KVCacheFull, match="append needs 2 new pages"):  # one copy-on-write + one new page
        pt.append([a, b], [1, 2])
    assert _snapshot(pt) == before
    assert not pt.can_append([a, b], [1, 2]) and pt.can_append([a, b], [1, 1])
    slots, src, dst = pt.append([a, b], [1, 1])  # still usable; exactly the one page left is taken
    assert (slots.tolist(), src.tolist(), dst.tolist()) == ([7, 5], [2], [3])
    assert pt.stats()["free"] == 0


def test_kv_cache_full_counts_hits_and_keeps_counters():
    pt = PageTable(3, 2)
    a, _, _ = pt.allocate([1, 2, 3, 4, 5])
    pt.free(a)  # pages 1, 0 cached and evictable, page 2 free
    before = _snapshot(pt)
    # Hitting pages 0 and 1 leaves only page 2 for four more tokens: needs 2.
    assert not pt.can_allocate([1, 2, 3, 4, 5, 6, 7, 8]) and pt.can_allocate([1, 2, 3, 4, 5, 6])
    with pytest.raises(KVCacheFull, match="needs 2 new pages but only 1 free"):
        pt.allocate([1, 2, 3, 4, 5, 6, 7, 8])
    assert _snapshot(pt) == before
    assert pt.can_allocate(6) and not pt.can_allocate(7)
    assert pt.allocate([1, 2, 3, 4, 5, 6])[1] == 4


def test_batch_tables_padding():
    pt = PageTable(8, 4)
    a, _, _ = pt.allocate([1, 2])
    b, _, _ = pt.allocate(list(range(9)))
    tables, lengths = pt.batch_tables([b, a, b])
    assert tables.dtype == np.int32 and lengths.dtype == np.int32
    assert tables.tolist() == [[1, 2, 3], [0, -1, -1], [1, 2, 3]] and lengths.tolist() == [9, 2, 9]
    tables, _ = pt.batch_tables([a], pad=7, max_pages=4)
    assert tables.tolist() == [[0, 7, 7, 7]]
    tables, lengths = pt.batch_tables([])
    assert tables.shape == (0, 0) and lengths.shape == (0,)
    with pytest.raises(ValueError, match=r"max_pages=2 is smaller than the longest page list \(3 pages\)"):
        pt.batch_tables([a, b], max_pages=2)


def test_stats_and_kv_bytes():
    pt = PageTable(8, 4)
    a, _, _ = pt.allocate(list(range(6)))
    pt.fork(a)
    pt.allocate([9])
    assert pt.stats() == {
        "num_pages": 8, "page_size": 4, "free": 5, "used": 3, "shared": 2, "cached": 1, "evictable": 0,
        "prefix_queries": 1, "prefix_hits": 0, "num_seqs": 3, "peak_used": 3,
    }
    assert pt.kv_bytes(100) == 3 * 4 * 100
    assert "used=3" in repr(pt)


def test_sequence_handles_are_never_reused():
    pt = PageTable(4, 2)
    a, _, _ = pt.allocate([1])
    pt.free(a)
    b, _, _ = pt.allocate([1])
    assert b == 1 and pt.live_seqs().tolist() == [1]
    with pytest.raises(ValueError, match="seq=0 was already freed"):
        pt.num_tokens(a)


def _table_with_two_seqs():
    pt = PageTable(8, 4)
    a, _, _ = pt.allocate([1, 2, 3, 4, 5])
    b, _, _ = pt.allocate([6])
    pt.free(b)
    return pt, a, b


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda pt, a, b: pt.allocate([]), ValueError, "at least one token"),
        (lambda pt, a, b: pt.allocate([1, -2]), ValueError, r"tokens\[1\]=-2 is negative"),
        (lambda pt, a, b: pt.allocate([[1, 2]]), TypeError, "tokens must be 1-D"),
        (lambda pt, a, b: pt.allocate([1.5]), TypeError, "tokens must hold integers, got dtype float64"),
        (lambda pt, a, b: pt.allocate([True]), TypeError, "tokens must hold integers, got dtype bool"),
        (lambda pt, a, b: pt.allocate(np.array([2**40])), ValueError, "tokens values must fit in int32"),
        (lambda pt, a, b: pt.fork(99), ValueError, r"seq=99 is not a sequence of this page table"),
        (lambda pt, a, b: pt.fork(-1), ValueError, r"seq=-1 is not a sequence"),
        (lambda pt, a, b: pt.fork(2**40), ValueError, r"seq=1099511627776 is out of range"),
        (lambda pt, a, b: pt.fork(1.0), TypeError, "seq must be an int, got float"),
        (lambda pt, a, b: pt.free(True), TypeError, "seq must be an int, got bool"),
        (lambda pt, a, b: pt.pages(np.bool_(False)), TypeError, "seq must be an int, got numpy.bool"),
        (lambda pt, a, b: pt.num_tokens(2**70), ValueError, "seq=1180591620717411303424 is out of range"),
        (lambda pt, a, b: pt.slot_of(a, 0.5), TypeError, "t must be an int, got float"),
        (lambda pt, a, b: pt.refcount(2**40), IndexError, r"page=1099511627776 is out of range \[0, 8\)"),
        (lambda pt, a, b: pt.fork(b), ValueError, "seq=1 was already freed"),
        (lambda pt, a, b: pt.free(b), ValueError, "seq=1 was already freed"),
        (lambda pt, a, b: pt.free_many([a, b]), ValueError, r"seqs\[1\]=1 was already freed"),
        (lambda pt, a, b: pt.fork_many([a, b]), ValueError, r"seqs\[1\]=1 was already freed"),
        (lambda pt, a, b: pt.fork_many([[a]]), TypeError, "seqs must be 1-D"),
        (lambda pt, a, b: pt.append([b], [1]), ValueError, r"seqs\[0\]=1 was already freed"),
        (lambda pt, a, b: pt.append([a, 7], [1, 1]), ValueError, r"seqs\[1\]=7 is not a sequence"),
        (lambda pt, a, b: pt.append([a, a], [1, 1]), ValueError, r"seqs\[1\]=0 is listed more than once"),
        (lambda pt, a, b: pt.append([a], [-1]), ValueError, r"counts\[0\]=-1 must be >= 0"),
        (lambda pt, a, b: pt.append([a], [1, 1]), ValueError, "same length, got 1 and 2"),
        (lambda pt, a, b: pt.append([a], [2], [1]), ValueError, r"tokens must hold sum\(counts\)=2 ids, got 1"),
        (lambda pt, a, b: pt.append([a], [1], [-5]), ValueError, r"tokens\[0\]=-5 is negative"),
        (lambda pt, a, b: pt.append([a], [1.0]), TypeError, "counts must hold integers"),
        (lambda pt, a, b: pt.append(np.array([[a]]), [1]), TypeError, r"seqs must be 1-D, got shape \(1, 1\)"),
        (lambda pt, a, b: pt.append(a, [1]), TypeError, r"seqs must be 1-D, got shape \(\)"),
        (lambda pt, a, b: pt.can_append([a, a], [1, 1]), ValueError, "listed more than once"),
        (lambda pt, a, b: pt.can_allocate(0), ValueError, "n_tokens=0 is out of range"),
        (lambda pt, a, b: pt.num_tokens(b), ValueError, "already freed"),
        (lambda pt, a, b: pt.pages(5), ValueError, "seq=5 is not a sequence"),
        (lambda pt, a, b: pt.batch_tables([a, b]), ValueError, r"seqs\[1\]=1 was already freed"),
        (lambda pt, a, b: pt.slot_of(a, 5), IndexError, r"t=5 is out of range \[0, 5\) for seq=0"),
        (lambda pt, a, b: pt.slot_of(b, 0), ValueError, "already freed"),
        (lambda pt, a, b: pt.refcount(8), IndexError, r"page=8 is out of range \[0, 8\)"),
        (lambda pt, a, b: pt.refcount(-1), IndexError, r"page=-1 is out of range"),
        (lambda pt, a, b: pt.is_cached(8), IndexError, r"page=8 is out of range"),
    ],
)
def test_bad_input_raises_and_table_stays_usable(call, exc, match):
    pt, a, b = _table_with_two_seqs()
    before = _snapshot(pt)
    with pytest.raises(exc, match=match):
        call(pt, a, b)
    assert _snapshot(pt) == before
    slots, src, _ = pt.append([a], [3], [1, 2, 3])
    assert slots.tolist() == [5, 6, 7] and src.size == 0
    c, _, slots = pt.allocate([4, 4])
    assert c == 2 and slots.tolist() == [8, 9]


@pytest.mark.parametrize(
    "args,exc,match",
    [
        ((0, 4), ValueError, "num_pages=0 is out of range"),
        ((4, 0), ValueError, "page_size=0 is out of range"),
        ((4.0, 4), TypeError, "num_pages must be an int"),
        ((4, 4, True, 65), ValueError, "hash_bits=65 is out of range"),
    ],
)
def test_bad_construction(args, exc, match):
    kwargs = {"hash_bits": args[3]} if len(args) == 4 else {}
    with pytest.raises(exc, match=match):
        PageTable(*args[:3], **kwargs)


def test_native_layer_checks_arrays_itself():
    t = _core.PageTable(4, 2)
    with pytest.raises(TypeError, match="tokens must be a numpy int32 array"):
        t.allocate(np.array([1, 2], dtype=np.int64))
    with pytest.raises(TypeError, match="tokens must be 1-D"):
        t.allocate(np.ones((1, 2), dtype=np.int32))
    with pytest.raises(TypeError, match="seqs must be C-contiguous"):
        t.append(np.zeros(4, dtype=np.int32)[::2], np.zeros(2, dtype=np.int32))
    with pytest.raises(ValueError, match="num_pages must be >= 1"):
        _core.PageTable(0, 2)
    assert t.allocate(np.array([1, 2, 3], dtype=np.int32))[0] == 0


def test_hash_collisions_never_return_a_wrong_page():
    pt = PageTable(8, 2, hash_bits=0)  # every page hashes to 0
    a, _, _ = pt.allocate([1, 2, 3])
    pt.free(a)
    b, cached, _ = pt.allocate([5, 6, 7])  # finds page 0 under its hash, tokens differ: a miss
    assert cached == 0 and pt.pages(b).tolist() == [1, 0]
    assert pt.is_cached(1) and not pt.is_cached(0)  # the newer entry replaced the colliding one
    assert pt.allocate([5, 6, 8])[1] == 2
    d, cached, _ = pt.allocate([1, 2, 3])
    assert cached == 0 and pt.stats()["cached"] == 1  # [1, 2] now holds the single hash bucket
    pt.free(d)
    assert pt.allocate([1, 2, 9])[1] == 2 and pt.allocate([5, 6, 9])[1] == 0


def test_concurrent_threads_keep_the_table_consistent():
    pt = PageTable(64, 4)
    errors = []

    def worker(k):
        try:
            for i in range(200):
                s, _, _ = pt.allocate([k, i % 5, 1, 2, 3, 4])
                c = pt.fork(s)
                pt.append([s, c], [3, 2], [k, k, k, k, k])
                pt.free(s)
                pt.free(c)
        except Exception as e:  # collected and asserted below: a failure in a thread must fail the test
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    st = pt.stats()
    assert st["num_seqs"] == 0 and st["used"] == 0 and st["free"] + st["evictable"] == 64


def _forked_tables(prefix_cache=True):
    """Two identical page tables: a 10-token prompt (page size 4) forked into 3 branches of
    different lengths, one of them sharing its partial last page."""
    out = []
    for _ in range(2):
        t = PageTable(32, 4, prefix_cache=prefix_cache)
        root, _, _ = t.allocate(np.arange(10))
        kids = [t.fork(root) for _ in range(3)]
        t.append(kids[:2], [3, 6], np.arange(9) + 50)
        out.append((t, kids))
    return out


@pytest.mark.parametrize("min_saving", [-1, 0, 10**6])
def test_decode_step_equals_append_tables_and_plan(min_saving):
    (a, kids), (b, _) = _forked_tables()
    tokens = np.array([7, 8, 9], dtype=np.int32)
    step = a.decode_step(kids, tokens, min_saving)
    slots, src, dst = b.append(kids, [1, 1, 1], tokens)
    tables, lens = b.batch_tables(kids, pad=0)
    assert np.array_equal(step.slot_mapping, slots) and np.array_equal(step.copy_src, src)
    assert np.array_equal(step.copy_dst, dst) and src.size == 1  # the third branch shared the root's last page
    assert np.array_equal(step.block_tables, tables) and np.array_equal(step.seq_lens, lens)
    assert step.positions.dtype == np.int64 and step.positions.tolist() == (lens - 1).tolist()
    if min_saving == 0:  # the 8-token prefix (two full pages) is read once instead of three times
        from ponder.attention_plan import AttentionPlan, plan_attention
        plan, want = AttentionPlan.from_native(step.plan, 4), plan_attention(tables, lens, 4, num_pages=32)
        for name in ("item_pages", "item_num_tokens", "item_queries", "merge_slots", "merge_indptr"):
            assert np.array_equal(getattr(plan, name), getattr(want, name)), name
    else:  # never asked for, or sharing saves less than asked
        assert step.plan is None
    assert a.stats() == b.stats()


def test_decode_step_is_all_or_nothing():
    t = PageTable(4, 4, prefix_cache=False)
    root, _, _ = t.allocate(np.arange(8))  # two full pages
    kids = [t.fork(root) for _ in range(3)]  # each needs a fresh page; only two are free
    before = t.stats()
    with pytest.raises(KVCacheFull):
        t.decode_step(kids, [1, 2, 3], 0)
    assert t.stats() == before and [t.num_tokens(k) for k in kids] == [8, 8, 8]
    with pytest.raises(ValueError, match="one token per sequence"):
        t.decode_step(kids, [1, 2], 0)
    with pytest.raises(ValueError):
        t.decode_step([kids[0], 99], [1, 2], 0)
    assert t.stats() == before
