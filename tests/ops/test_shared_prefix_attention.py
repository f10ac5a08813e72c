"""shared_prefix_attention through an attention plan -- the torch reference and the native CPU
kernel (``ponder._core.shared_prefix_attention_cpu``, called directly so that every case runs it,
whatever the host dispatch picks) -- against paged_attention."""

import numpy as np
import pytest
import torch

import ponder.ops as ops
from ponder import PageTable
from ponder.attention_plan import plan_attention
from ponder.ops import attention, reference, reference_attention

# fp32: both sides multiply and exponentiate in fp32, in another order (SDPA's fused softmax vs
# per-item products and a log-sum-exp merge); measured gaps stay below 1e-6, 2e-5 is a wide margin.
# bf16: both read the same bf16 K/V / q and compute in fp32; the outputs differ by at most the
# final rounding to bf16, one step of 2**-7 relative at most, inside 1e-2 * (1 + |x|).
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.bfloat16: dict(atol=1e-2, rtol=1e-2)}


def grow_tree_batch(seed, S, num_roots=1, max_nodes=16, max_kids=3, max_step=6, max_prompt=None):
    """The leaves of random search trees, built with a real PageTable (fork + append, so partial
    pages are copied on write): block tables ``[B, max_pages]`` int32 padded with -1, seq lens
    ``[B]`` int32 (each including its decode token), the pool size and the slots in use."""
    rng = np.random.default_rng(seed)
    table = PageTable(num_pages=4096, page_size=S, prefix_cache=False)
    frontier = []
    for _ in range(num_roots):
        # at least one full page: a prompt inside one partial page is copied by every child
        n = int(rng.integers(S, max(S, max_prompt or 3 * S) + 1))
        seq, _, _ = table.allocate(rng.integers(0, 50, n))
        frontier.append(seq)
    roots = set(frontier)  # a root has two children or more, so its prompt is shared
    leaves, num_nodes = [], num_roots
    while frontier:
        seq = frontier.pop(0)
        kids = int(rng.integers(2 if seq in roots else 0, max_kids + 1)) if num_nodes < max_nodes else 0
        if kids == 0:
            leaves.append(seq)
        for _ in range(kids):
            child = table.fork(seq)
            table.append([child], [int(rng.integers(1, max_step + 1))])
            frontier.append(child)
            num_nodes += 1
    leaves = rng.permutation(leaves)
    tables, lens = table.batch_tables(leaves)
    used = np.concatenate([[table.slot_of(int(s), t) for t in range(table.num_tokens(int(s)))] for s in leaves])
    return tables, lens, int(tables.max()) + 1, used


def make_kv(num_pages, S, Hk, D, used_slots, dtype, L=2, seed=0):
    """Random K/V in the used slots and NaN everywhere else, so a read past a branch's tokens shows."""
    g = torch.Generator().manual_seed(seed)
    kv = torch.full((L, 2, num_pages * S, Hk, D), float("nan"))
    slots = torch.as_tensor(used_slots, dtype=torch.long)
    kv[:, :, slots] = torch.randn(L, 2, slots.numel(), Hk, D, generator=g)
    return kv.view(L, 2, num_pages, S, Hk, D).to(dtype)


def run_both(tables, lens, num_pages, used, S, H, Hk, D, dtype, layer=1, seed=0, backend="auto", **plan_options):
    kv = make_kv(num_pages, S, Hk, D, used, dtype, seed=seed)
    B = len(lens)
    q = torch.randn(B, H, D, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    bt, sl = torch.from_numpy(tables), torch.from_numpy(lens)
    expected = reference.paged_attention(q, kv, layer, bt, sl, torch.arange(B + 1, dtype=torch.int32), D**-0.5)
    plan = plan_attention(tables, lens, S, num_pages=num_pages, **plan_options)
    if backend == "native":
        out = attention._shared_prefix_attention_native(q, kv, layer, plan.to("cpu"), D**-0.5)
    else:
        out = ops.shared_prefix_attention(q, kv, layer, plan.to("cpu"), D**-0.5, backend=backend)
    assert out.dtype == dtype and out.shape == (B, H, D)
    return out, expected, plan


TREES = {
    # name: grow_tree_batch keyword arguments
    "tree": dict(num_roots=1, max_nodes=16),
    "deep_tree": dict(num_roots=1, max_nodes=30, max_kids=2, max_step=3),
    "forest": dict(num_roots=3, max_nodes=24),
    "wide_prompt": dict(num_roots=1, max_nodes=12, max_prompt=40),
}
HEADS = [(4, 4), (4, 2), (8, 2), (9, 3)]  # G = 1, 2, 4 and SmolLM2's 3


@pytest.mark.parametrize("backend", ["torch", "native", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("S", [1, 3, 4, 16])
@pytest.mark.parametrize("H,Hk", HEADS)
@pytest.mark.parametrize("tree", list(TREES))
def test_shared_prefix_attention_matches_paged_attention(tree, H, Hk, S, dtype, backend):
    tables, lens, num_pages, used = grow_tree_batch(seed=len(tree) + S + H, S=S, **TREES[tree])
    # D=12: no power of two
    out, expected, plan = run_both(tables, lens, num_pages, used, S, H, Hk, 12, dtype, backend=backend)
    assert plan.num_shared_items > 0  # the trees really share pages
    torch.testing.assert_close(out, expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("D", [32, 64, 128])
@pytest.mark.parametrize("H,Hk", HEADS + [(10, 2)])
def test_native_fixed_head_dims(H, Hk, D, dtype):
    """The native kernel's fixed head-dim path (32, 64, 128): query heads per KV head taken 3 at a
    time (G = 1, 2, 3, 4 = 3 + 1, 5 = 3 + 2), shared prompts longer than one 128-token chunk,
    branches ending mid-page."""
    tables, lens, num_pages, used = grow_tree_batch(seed=D + H, S=16, num_roots=2, max_nodes=14, max_prompt=300)
    out, expected, plan = run_both(tables, lens, num_pages, used, 16, H, Hk, D, dtype, backend="native")
    assert plan.num_shared_items > 0 and int(plan.item_num_tokens.max()) > 128
    assert (lens % 16 != 0).any()
    torch.testing.assert_close(out, expected, **TOL[dtype])


@pytest.mark.parametrize("backend", ["torch", "native"])
@pytest.mark.parametrize("S", [2, 5])
def test_shared_prefix_attention_without_sharing(S, backend):
    tables, lens, num_pages, used = grow_tree_batch(seed=S, S=S, num_roots=5, max_nodes=5)
    out, expected, plan = run_both(tables, lens, num_pages, used, S, 6, 3, 20, torch.float32, backend=backend)
    assert plan.num_shared_items == 0 and plan.num_items == 5
    torch.testing.assert_close(out, expected, **TOL[torch.float32])


@pytest.mark.parametrize("options", [dict(max_pages_per_item=1), dict(max_queries_per_item=2),
                                     dict(max_pages_per_item=2, max_queries_per_item=3)])  # fmt: skip
@pytest.mark.parametrize("backend", ["torch", "native"])
def test_shared_prefix_attention_on_split_items(options, backend):
    tables, lens, num_pages, used = grow_tree_batch(seed=3, S=2, num_roots=2, max_nodes=20, max_prompt=9)
    out, expected, _ = run_both(tables, lens, num_pages, used, 2, 8, 2, 16, torch.float32, backend=backend, **options)
    torch.testing.assert_close(out, expected, **TOL[torch.float32])


def test_shared_prefix_attention_shared_partial_last_page():
    # Two identical branches share page 1 with 3 of its 4 slots valid; slot 3 holds NaN.
    S, Hk, D = 4, 2, 8
    tables = np.array([[0, 1], [0, 1], [0, 2]], dtype=np.int32)
    lens = np.array([7, 7, 6], dtype=np.int32)
    used = [0, 1, 2, 3, 4, 5, 6, 8, 9]
    out, expected, plan = run_both(tables, lens, 3, used, S, 4, Hk, D, torch.float32)
    assert plan.item_num_tokens.tolist() == [4, 3, 2]  # page 0 by all, page 1 by branches 0 and 1
    torch.testing.assert_close(out, expected, **TOL[torch.float32])


def test_reference_reads_each_item_once_in_one_product_per_shape(monkeypatch):
    """Every page of the plan is gathered exactly once, and items of equal shape share a call."""
    tables, lens, num_pages, used = grow_tree_batch(seed=5, S=2, num_roots=2, max_nodes=24)
    calls = []
    attend = reference_attention._attend_items

    def spy(q, k_plane, v_plane, pages, num_tokens, rows, scale):
        calls.append((pages.clone(), rows.clone()))
        return attend(q, k_plane, v_plane, pages, num_tokens, rows, scale)

    monkeypatch.setattr(reference_attention, "_attend_items", spy)
    out, expected, plan = run_both(tables, lens, num_pages, used, 2, 8, 2, 16, torch.float32, backend="torch")
    torch.testing.assert_close(out, expected, **TOL[torch.float32])
    gathered = sorted(torch.cat([p.reshape(-1) for p, _ in calls]).tolist())
    assert gathered == sorted(plan.item_pages.tolist())
    assert sum(p.shape[0] for p, _ in calls) == plan.num_items
    shapes = {(int(a), int(b)) for a, b in zip(np.diff(plan.item_page_indptr), np.diff(plan.item_query_indptr))}
    assert len(calls) == len(shapes) < plan.num_items


def test_one_plan_serves_every_layer():
    tables, lens, num_pages, used = grow_tree_batch(seed=9, S=4, num_roots=1, max_nodes=10)
    kv = make_kv(num_pages, 4, 2, 8, used, torch.float32, L=3)
    q = torch.randn(len(lens), 4, 8, generator=torch.Generator().manual_seed(2))
    plan = ops.plan_shared_prefix_attention(tables, lens, kv, num_heads=4)
    bt, sl, qi = torch.from_numpy(tables), torch.from_numpy(lens), torch.arange(len(lens) + 1, dtype=torch.int32)
    for layer in range(3):
        expected = reference.paged_attention(q, kv, layer, bt, sl, qi, 0.3)
        torch.testing.assert_close(ops.shared_prefix_attention(q, kv, layer, plan, 0.3), expected, **TOL[torch.float32])


def test_plan_shared_prefix_attention_keeps_segments_whole_for_the_reference():
    tables = np.array([[0, 1, 2, 3, 4]] * 40, dtype=np.int32)
    tables[:, 4] = 4 + np.arange(40)
    kv = torch.zeros(1, 2, 44, 4, 2, 8)
    plan = ops.plan_shared_prefix_attention(tables, np.full(40, 18, dtype=np.int32), kv, num_heads=8, backend="torch")
    # one item for the 16-token prompt with all 40 branches, one per tail
    assert plan.num_items == 41 and plan.max_item_queries == 40 and plan.page_size == 4
    with pytest.raises(ValueError, match="num_heads must be a positive multiple"):
        ops.plan_shared_prefix_attention(tables, np.full(40, 18, dtype=np.int32), kv, num_heads=5)


def test_shared_prefix_attention_opcheck():
    tables, lens, num_pages, used = grow_tree_batch(seed=4, S=3, num_roots=2, max_nodes=10)
    # opcheck compares outputs with NaN-sensitive equality
    kv = torch.nan_to_num(make_kv(num_pages, 3, 2, 8, used, torch.float32))
    q = torch.randn(len(lens), 4, 8, generator=torch.Generator().manual_seed(1))
    plan = plan_attention(tables, lens, 3).to("cpu")
    arrays = (plan.item_page_indptr, plan.item_pages, plan.item_num_tokens, plan.item_query_indptr, plan.item_queries,
              plan.merge_indptr, plan.merge_slots)  # fmt: skip
    args = (q, kv, 1, *arrays, plan.num_shared_items, plan.max_item_queries, 0.35, "torch")
    torch.library.opcheck(torch.ops.ponder.shared_prefix_attention.default, args)
    expected = ops.shared_prefix_attention(q, kv, 1, plan, 0.35, backend="torch")
    torch.testing.assert_close(torch.ops.ponder.shared_prefix_attention(*args), expected, atol=0, rtol=0)


def test_shared_prefix_attention_compiles_into_one_graph():
    tables, lens, num_pages, used = grow_tree_batch(seed=6, S=2, num_roots=1, max_nodes=8)
    kv = make_kv(num_pages, 2, 1, 8, used, torch.float32)
    q = torch.randn(len(lens), 2, 8, generator=torch.Generator().manual_seed(3))
    plan = plan_attention(tables, lens, 2).to("cpu")

    def attend(q, kv, plan):
        return ops.shared_prefix_attention(q * 2.0, kv, 0, plan, 0.5)

    torch._dynamo.reset()
    got = torch.compile(attend, backend="aot_eager", fullgraph=True)(q, kv, plan)
    torch.testing.assert_close(got, attend(q, kv, plan), atol=0, rtol=0)


def _bad_case():
    tables = np.array([[0, 1], [0, 2]], dtype=np.int32)
    kv = torch.randn(2, 2, 3, 4, 2, 8)
    return torch.randn(2, 4, 8), kv, plan_attention(tables, [6, 5], 4).to("cpu")


def _corrupt(plan, name, values):
    return plan._replace(**{name: torch.tensor(values, dtype=torch.int32)})


@pytest.mark.parametrize(
    "change,exc,match",
    [
        (lambda q, kv, p: (q[:1], kv, p), ValueError, "q has 1 rows but the plan has 2 queries"),
        (lambda q, kv, p: (q[:, :3], kv, p), ValueError, "not a multiple"),
        (lambda q, kv, p: (q[..., :6], kv, p), ValueError, "head dim"),
        (lambda q, kv, p: (q.long(), kv, p), TypeError, r"q must be a \[B, H, D\] float"),
        (lambda q, kv, p: (q, kv[:, :, :, :2].contiguous(), p), ValueError, "page size 4 but the kv_cache has S = 2"),
        (lambda q, kv, p: (q, kv, plan_attention([[0, 1], [0, 2]], [6, 5], 4)), TypeError, r"\.to\(device\)"),
        (lambda q, kv, p: (q, kv, p._replace(item_pages=p.item_pages.long())), TypeError, "plan.item_pages must be"),
        (lambda q, kv, p: (q, kv, _corrupt(p, "item_pages", [0, 1, 3])), IndexError, r"page ids in \[0, 3\)"),
        (lambda q, kv, p: (q, kv, _corrupt(p, "item_queries", [0, 2, 0, 1])), IndexError, r"rows of q in \[0, 2\)"),
        (lambda q, kv, p: (q, kv, _corrupt(p, "item_num_tokens", [4, 5, 1])), ValueError, r"item_num_tokens\[1\] = 5"),
        (lambda q, kv, p: (q, kv, _corrupt(p, "merge_slots", [0, 3, 2, 1])), ValueError, "slots s with item_queries"),
        (lambda q, kv, p: (q, kv, _corrupt(p, "item_page_indptr", [0, 2, 2, 3])), ValueError, "rise strictly"),
    ],
)
def test_shared_prefix_attention_bad_input(change, exc, match):
    q, kv, plan = _bad_case()
    q2, kv2, plan2 = change(q, kv, plan)
    with pytest.raises(exc, match=match):
        ops.shared_prefix_attention(q2, kv2, 1, plan2, 0.5)
    ops.shared_prefix_attention(q, kv, 1, plan, 0.5)  # the op is still usable afterwards


def test_shared_prefix_attention_bad_scale_and_layer():
    q, kv, plan = _bad_case()
    with pytest.raises(TypeError, match="scale must be a float"):
        ops.shared_prefix_attention(q, kv, 1, plan, "0.5")
    with pytest.raises(IndexError, match=r"layer must lie in \[0, 2\)"):
        ops.shared_prefix_attention(q, kv, 2, plan, 0.5)


def test_kernel_launchers_refuse_a_plan_that_does_not_fit():
    # _checks.plan_fits guards the GPU launchers, which are also called directly
    from ponder.ops import _checks

    tables, lens = np.array([[0, 1], [0, 2]], dtype=np.int32), np.array([6, 7], dtype=np.int32)
    plan = plan_attention(tables, lens, 4, num_pages=3).to("cpu")
    kv = torch.zeros(1, 2, 3, 4, 2, 8)
    _checks.plan_fits(torch.zeros(2, 4, 8), kv, plan)  # fits
    with pytest.raises(ValueError, match="q has 3 rows but the plan has 2 queries"):
        _checks.plan_fits(torch.zeros(3, 4, 8), kv, plan)
    with pytest.raises(ValueError, match="do not fit kv_cache with S=4, Hk=2, D=8"):
        _checks.plan_fits(torch.zeros(2, 3, 8), kv, plan)  # 3 heads over 2 KV heads
    with pytest.raises(ValueError, match="do not fit kv_cache"):
        _checks.plan_fits(torch.zeros(2, 4, 8), torch.zeros(1, 2, 3, 2, 2, 8), plan)  # page size 2


def test_kernel_item_options():
    from ponder.attention_plan import kernel_item_options

    assert kernel_item_options(16, 3) == {"max_pages_per_item": 64, "max_queries_per_item": 21}
    assert kernel_item_options(4096, 128, tokens_per_item=1024, rows_per_item=64) == {
        "max_pages_per_item": 1, "max_queries_per_item": 1}  # fmt: skip
