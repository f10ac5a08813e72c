import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ponder.attention_plan import plan_attention


def _literal(plan):
    return {
        "pages": [plan.item_pages[a:b].tolist() for a, b in zip(plan.item_page_indptr[:-1], plan.item_page_indptr[1:])],
        "start": plan.item_token_start.tolist(),
        "tokens": plan.item_num_tokens.tolist(),
        "queries": [
            plan.item_queries[a:b].tolist() for a, b in zip(plan.item_query_indptr[:-1], plan.item_query_indptr[1:])
        ],
        "merge": [plan.merge_slots[a:b].tolist() for a, b in zip(plan.merge_indptr[:-1], plan.merge_indptr[1:])],
    }


def test_three_level_tree_literal():
    tables = np.array([[0, 1, 2, -1], [0, 1, 3, 4], [0, 5, -1, -1]], dtype=np.int32)
    plan = plan_attention(tables, np.array([10, 14, 7], dtype=np.int32), 4)
    assert (plan.num_queries, plan.num_segments, plan.num_items, plan.num_slots) == (3, 5, 5, 8)
    assert plan.num_shared_items == 2 and plan.max_item_queries == 3
    assert _literal(plan) == {
        "pages": [[0], [1], [2], [3, 4], [5]],
        "start": [0, 4, 8, 8, 4],
        "tokens": [4, 4, 2, 6, 3],
        "queries": [[0, 1, 2], [0, 1], [0], [1], [2]],
        "merge": [[0, 3, 5], [1, 4, 6], [2, 7]],
    }
    assert plan.pages_read() == 6  # against 3 + 4 + 2 = 9 pages read branch by branch


def test_forest_of_two_trees_and_torch_input():
    tables = torch.tensor([[7, 8, -1], [3, 4, 9], [7, 1, -1], [3, 4, -1]], dtype=torch.int64)
    plan = plan_attention(tables, torch.tensor([3, 6, 4, 4]), 2)
    assert plan.item_segment.tolist() == [0, 3, 1, 2, 4]
    assert _literal(plan) == {
        "pages": [[7], [3, 4], [8], [1], [9]],
        "start": [0, 0, 2, 2, 4],
        "tokens": [2, 4, 1, 2, 2],
        "queries": [[0, 2], [1, 3], [0], [2], [1]],
        "merge": [[0, 4], [2, 6], [1, 5], [3]],
    }


def test_no_sharing_is_one_item_per_branch():
    plan = plan_attention([[4, 5], [6, -1], [2, 3]], [5, 1, 6], 3)
    assert plan.num_shared_items == 0
    assert _literal(plan)["queries"] == [[0], [1], [2]]
    assert _literal(plan)["pages"] == [[4, 5], [6], [2, 3]]
    assert plan.merge_slots.tolist() == [0, 1, 2]


def test_partial_last_page_is_shared_only_with_equal_valid_tokens():
    same = plan_attention([[0, 1], [0, 1]], [3, 3], 2)
    assert _literal(same)["pages"] == [[0, 1]] and same.item_num_tokens.tolist() == [3]
    differ = plan_attention([[0, 1], [0, 1]], [4, 3], 2)
    assert _literal(differ)["pages"] == [[0], [1], [1]]
    assert _literal(differ)["queries"] == [[0, 1], [0], [1]]
    assert differ.item_num_tokens.tolist() == [2, 2, 1]


def test_splitting_long_segments_and_query_groups():
    plan = plan_attention([[0, 1, 2, 3, 4]] * 3, [10, 10, 10], 2, max_pages_per_item=2, max_queries_per_item=2)
    lit = _literal(plan)
    # shared items (2 queries) first, then the single-query remainders, page chunks in order
    assert lit["queries"] == [[0, 1], [0, 1], [0, 1], [2], [2], [2]]
    assert lit["pages"] == [[0, 1], [2, 3], [4], [0, 1], [2, 3], [4]]
    assert lit["start"] == [0, 4, 8, 0, 4, 8] and lit["tokens"] == [4, 4, 2, 4, 4, 2]
    assert plan.num_segments == 1 and plan.num_shared_items == 3


def test_to_device_views_match_arrays():
    plan = plan_attention([[0, 1, 2, -1], [0, 1, 3, 4], [0, 5, -1, -1]], [10, 14, 7], 4)
    dev = plan.to("cpu")
    assert dev.item_pages.dtype == torch.int32
    assert dev.item_pages.tolist() == plan.item_pages.tolist()
    assert dev.merge_slots.tolist() == plan.merge_slots.tolist()
    assert dev.item_query_indptr.tolist() == plan.item_query_indptr.tolist()
    assert (dev.num_items, dev.num_queries, dev.page_size) == (5, 3, 4)


@pytest.mark.parametrize(
    "tables,lens,kwargs,exc,match",
    [
        ([[0, 1]], [0], {}, ValueError, r"seq_lens\[0\] = 0 must lie in \[1, 4\]"),
        ([[0, 1]], [5], {}, ValueError, r"seq_lens\[0\] = 5"),
        ([[0, -1]], [3], {}, IndexError, r"block_tables\[0, 1\] = -1"),
        ([[0, 8]], [3], {"num_pages": 8}, IndexError, r"\[0, 8\)"),
        ([[0.0, 1.0]], [3], {}, TypeError, "block_tables must be a .* integer array, got dtype float64"),
        ([0, 1], [3], {}, ValueError, r"block_tables must be a \[B, max_pages\]"),
        ([[0, 1]], [3, 3], {}, ValueError, "seq_lens has 2 entries but block_tables has 1 rows"),
        ([[0, 1]], [3], {"max_pages_per_item": -1}, ValueError, "max_pages_per_item must be an int >= 0"),
        ([[0, 1]], [3], {"page_size": 0}, ValueError, "page_size must be an int >= 1"),
        ([[0, 2**40]], [3], {}, ValueError, "must fit in int32"),
    ],
)
def test_bad_input_is_refused(tables, lens, kwargs, exc, match):
    page_size = kwargs.pop("page_size", 2)
    with pytest.raises(exc, match=match):
        plan_attention(tables, lens, page_size, **kwargs)


# ---- property: plans of random search forests -------------------------------------------------
@st.composite
def forests(draw):
    """Leaves of random search forests with page tables grown like ponder.PageTable: a child
    shares its parent's pages, and its first token into a shared partial page copies it."""
    S = draw(st.integers(1, 4))
    nodes = [([], 0) for _ in range(draw(st.integers(1, 3)))]
    fresh = 0
    leaves = []
    i = 0
    while i < len(nodes):
        pages, length = nodes[i]
        kids = draw(st.integers(0, 3)) if len(nodes) < 30 else 0
        if kids == 0 and length > 0:
            leaves.append(nodes[i])
        for _ in range(kids):
            child, n = list(pages), length
            for t in range(draw(st.integers(0, 3 * S))):
                if n % S == 0:
                    child.append(fresh)
                    fresh += 1
                elif t == 0:
                    child[-1] = fresh
                    fresh += 1
                n += 1
            nodes.append((child, n))
        i += 1
    if not leaves:
        leaves = [([fresh], 1)]
        fresh += 1
    order = draw(st.permutations(range(len(leaves))))
    leaves = [leaves[j] for j in order]
    width = max(len(p) for p, _ in leaves) + draw(st.integers(0, 2))
    tables = np.full((len(leaves), width), -1, dtype=np.int32)
    for b, (p, _) in enumerate(leaves):
        tables[b, : len(p)] = p
    return tables, np.array([n for _, n in leaves], dtype=np.int32), S, fresh


@given(forests(), st.integers(0, 3), st.integers(0, 3))
def test_every_query_token_pair_is_covered_exactly_once(forest, max_pages_per_item, max_queries_per_item):
    tables, lens, S, num_pages = forest
    plan = plan_attention(tables, lens, S, num_pages=num_pages, max_pages_per_item=max_pages_per_item,
                          max_queries_per_item=max_queries_per_item)  # fmt: skip
    covered = [np.zeros(n, dtype=np.int64) for n in lens]
    for i in range(plan.num_items):
        pages = plan.item_pages[plan.item_page_indptr[i] : plan.item_page_indptr[i + 1]]
        pos = plan.item_token_start[i] + np.arange(plan.item_num_tokens[i])
        assert len(pages) == -(-plan.item_num_tokens[i] // S) and plan.item_token_start[i] % S == 0
        queries = plan.item_queries[plan.item_query_indptr[i] : plan.item_query_indptr[i + 1]]
        assert (len(queries) >= 2) == (i < plan.num_shared_items)
        if max_queries_per_item:
            assert len(queries) <= max_queries_per_item
        for b in queries:
            assert pos[-1] < lens[b]
            assert (tables[b, pos // S] == pages[(pos - pos[0]) // S]).all()
            covered[b][pos] += 1
    assert all((c == 1).all() for c in covered)
    for b in range(len(lens)):
        slots = plan.merge_slots[plan.merge_indptr[b] : plan.merge_indptr[b + 1]]
        assert (plan.item_queries[slots] == b).all()
    if max_pages_per_item == 0 and max_queries_per_item == 0:
        # the tree's pages are each read once: the plan reads exactly the distinct pages in use
        used = {int(tables[b, c]) for b in range(len(lens)) for c in range(-(-int(lens[b]) // S))}
        assert plan.pages_read() == len(used)


def test_item_tokens_by_query_and_for_queries_on_the_docstring_example():
    from ponder.attention_plan import plan_attention

    plan = plan_attention([[0, 1, 2, -1], [0, 1, 3, 4], [0, 5, -1, -1]], [10, 14, 7], 4)
    assert plan.item_tokens_by_query().tolist() == [[4, 4, 2], [4, 4, 6], [4, 3, -1]]
    cut = plan.for_queries(np.array([2, 0]))  # query 2 becomes 0, query 0 becomes 1
    assert cut.num_queries == 2 and cut.max_item_queries == 2 and cut.num_shared_items == 1
    assert cut.item_pages.tolist() == [0, 1, 2, 5] and cut.item_page_indptr.tolist() == [0, 1, 2, 3, 4]
    assert cut.item_num_tokens.tolist() == [4, 4, 2, 3] and cut.item_token_start.tolist() == [0, 4, 8, 4]
    assert cut.item_query_indptr.tolist() == [0, 2, 3, 4, 5] and cut.item_queries.tolist() == [1, 0, 1, 1, 0]
    assert cut.merge_indptr.tolist() == [0, 2, 5] and cut.merge_slots.tolist() == [1, 4, 0, 2, 3]
    # each kept query keeps its items' token counts, in order
    assert cut.item_tokens_by_query().tolist() == [[4, 3, -1], [4, 4, 2]]


def test_a_cut_plan_gives_its_queries_the_bits_of_the_whole_plan():
    import torch
    from ponder import ops
    from ponder.attention_plan import plan_attention

    torch.manual_seed(0)
    S, P, Hk, G, D = 4, 12, 2, 3, 16
    kv = torch.randn(1, 2, P, S, Hk, D)
    tables = [[0, 1, 2, -1], [0, 1, 3, 4], [0, 5, -1, -1], [0, 1, 6, 7], [0, 8, 9, 10]]
    lens = [10, 14, 7, 16, 13]
    q = torch.randn(5, Hk * G, D)
    full = plan_attention(tables, lens, S)
    whole = ops.shared_prefix_attention(q, kv, 0, full.to("cpu"), 0.25)
    for keep in ([1, 3], [4, 0, 2], [2]):
        cut = full.for_queries(np.array(keep)).to("cpu")
        part = ops.shared_prefix_attention(q[keep], kv, 0, cut, 0.25)
        assert torch.equal(part, whole[keep])
