"""``DecoderLM.forward(row_groups=...)``: decode rows known to give the same result run their
row-wise work once per group, with the same bits as running every row."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from paged_batch import PagedSequences
from ponder import ops
from ponder.attention_plan import plan_attention
from ponder.kv_store import split_by_items
from ponder.models import DecoderLM, ModelConfig

SMALL = ModelConfig(vocab_size=53, hidden_size=30, intermediate_size=44, num_layers=3, num_heads=6,
                    num_kv_heads=2, head_dim=10, max_position_embeddings=96, model_type="llama")
# gate_up is 2 x 1024 x 256 fp32 = 2 MiB: decode rows of it take the native linear kernel
LARGE = ModelConfig(vocab_size=61, hidden_size=256, intermediate_size=1024, num_layers=2, num_heads=4,
                    num_kv_heads=2, head_dim=64, max_position_embeddings=96, model_type="llama",
                    attention_bias=True, attention_out_bias=True)


def _model(cfg):
    torch.manual_seed(0)
    return DecoderLM(cfg, init_std=0.3).eval()


def _groups_of(keys):
    """(firsts, groups) int64 tensors of equal-key rows, firsts in order of first appearance."""
    _, firsts, groups = np.unique(np.asarray(keys), return_index=True, return_inverse=True)
    # relabel so group ids follow the first rows' order (any labelling is valid)
    order = np.argsort(firsts)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return torch.from_numpy(firsts[order].astype(np.int64)), torch.from_numpy(rank[groups.reshape(-1)].astype(np.int64))


def _search_like_run(model, use_groups: bool, seed: int, shared_rows, steps: int = 7, plan: str = "none"):
    """Two prompts, each forked into several branches (and some branches forked again) that decode
    ``steps`` tokens each. Branch tokens come from a few choices, so many branches stay identical
    (same parent, same tokens so far) for a while and then part. Returns the hidden rows of every
    step and the final cache; ``shared_rows[0]`` counts the rows a group's first row ran for.
    ``plan``: "none", or every decode step goes through a shared-prefix attention plan of all
    rows ("all-rows") or, with groups, of the groups' first rows ("cut")."""
    cfg = model.config
    rng = random.Random(seed)
    seqs = PagedSequences(num_pages=400, page_size=4, seed=seed)
    kv = model.allocate_kv_cache(400, 4)
    roots = [seqs.new(), seqs.new()]
    prompts = [[rng.randrange(cfg.vocab_size) for _ in range(n)] for n in (9, 6)]
    outs = [model(kv_cache=kv, **seqs.step(roots, prompts))]
    # (page sequence, key of its content): equal keys = same tokens on the same parent
    branches = []
    for r, root in enumerate(roots):
        for _ in range((6, 5)[r]):
            branches.append((seqs.fork(kv, root), (r,)))
    for step in range(steps):
        if step == 3:  # a second level: fork a few branches after their third token
            for seq, key in list(branches[::3]):
                branches.append((seqs.fork(kv, seq), key))
        tokens = [rng.choice((3, 4)) if rng.random() < 0.8 else rng.randrange(cfg.vocab_size) for _ in branches]
        # branches with the same content so far draw the same token most of the time
        first_choice = {}
        for i, (_, key) in enumerate(branches):
            if key in first_choice and rng.random() < 0.85:
                tokens[i] = first_choice[key]
            first_choice.setdefault(key, tokens[i])
        branches = [(seq, key + (t,)) for (seq, key), t in zip(branches, tokens)]
        batch = seqs.step([s for s, _ in branches], [[t] for t in tokens])
        groups = _groups_of([hash(k) for _, k in branches]) if use_groups else None
        decode_plan = None
        if plan == "all-rows" or (plan == "cut" and groups is None):
            decode_plan = ops.plan_shared_prefix_attention(batch["block_tables"], batch["seq_lens"], kv,
                                                           cfg.num_heads)
        elif plan == "cut":  # the first rows alone, after rows whose items differ left their groups
            full = plan_attention(batch["block_tables"], batch["seq_lens"], seqs.page_size)
            groups, _ = split_by_items(full, tuple(g.numpy() for g in groups))
            decode_plan = full.for_queries(groups[0]).to("cpu")
            groups = tuple(torch.from_numpy(g) for g in groups)
        if groups is not None:
            shared_rows[0] += len(branches) - groups[0].shape[0]
        outs.append(model(kv_cache=kv, **batch, row_groups=groups, decode_plan=decode_plan))
    return outs, kv


@pytest.mark.parametrize("cfg", [SMALL, LARGE], ids=["small", "native-linears"])
@pytest.mark.parametrize("plan", ["none", "all-rows", "cut"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_row_groups_give_the_same_bits_as_every_row(cfg, plan, seed):
    """Through a plan, forked branches hold the same keys in pages shared differently, so they
    can round apart: with a plan of all rows such a row leaves its group mid-forward; with a
    plan cut down to the first rows it left its group before (its items differ). Either way the
    result stays exact."""
    model = _model(cfg)
    plain, kv_plain = _search_like_run(model, False, seed, [0], plan="none" if plan == "none" else "all-rows")
    shared_rows = [0]
    grouped, kv_grouped = _search_like_run(model, True, seed, shared_rows, plan=plan)
    assert shared_rows[0] > 20  # the test really groups rows
    assert len(plain) == len(grouped)
    for a, b in zip(plain, grouped):
        assert torch.equal(a, b)
    assert torch.equal(kv_plain, kv_grouped)


def test_one_group_and_all_alone():
    """Every row in one group, and every row its own group (the plain path)."""
    model = _model(SMALL)
    for groups_of in (lambda n: (torch.zeros(1, dtype=torch.int64), torch.zeros(n, dtype=torch.int64)),
                      lambda n: (torch.arange(n), torch.arange(n))):
        results = []
        for use in (False, True):
            seqs = PagedSequences(num_pages=40, page_size=4, seed=5)
            kv = model.allocate_kv_cache(40, 4)
            root = seqs.new()
            model(kv_cache=kv, **seqs.step([root], [[1, 2, 3, 4, 5]]))
            kids = [seqs.fork(kv, root) for _ in range(4)]
            out = [model(kv_cache=kv, **seqs.step(kids, [[7]] * 4), row_groups=groups_of(4) if use else None)
                   for _ in range(3)]
            results.append((out, kv))
        for a, b in zip(results[0][0], results[1][0]):
            assert torch.equal(a, b)
        assert torch.equal(results[0][1], results[1][1])


def _decode_batch():
    model = _model(SMALL)
    seqs = PagedSequences(num_pages=20, page_size=4, seed=1)
    kv = model.allocate_kv_cache(20, 4)
    root = seqs.new()
    model(kv_cache=kv, **seqs.step([root], [[1, 2, 3]]))
    kids = [seqs.fork(kv, root) for _ in range(3)]
    before = kv.clone()
    return model, kv, before, seqs.step(kids, [[7], [7], [9]])


G = torch.tensor
OK = (G([0, 2]), G([0, 0, 1]))


@pytest.mark.parametrize("row_groups, error, match", [
    ([OK[0]], TypeError, r"row_groups must be a pair \(firsts, groups\)"),
    ((OK[0].int(), OK[1]), TypeError, r"row_groups\[0\] \(firsts\) must be a 1-D torch.int64"),
    ((OK[0], OK[1][None]), TypeError, r"row_groups\[1\] \(groups\) must be a 1-D torch.int64"),
    ((OK[0], G([0, 0])), ValueError, r"row_groups\[1\] \(groups\) must have T=3 entries"),
    ((G([], dtype=torch.int64), OK[1]), ValueError, r"row_groups\[0\] \(firsts\) must hold 1 to T=3 rows"),
    ((G([0, 5]), OK[1]), ValueError, r"firsts\) must hold row indices in \[0, 3\)"),
    ((OK[0], G([0, 0, 2])), ValueError, r"groups\) must hold group ids in \[0, 2\)"),
    ((G([1, 0]), OK[1]), ValueError, r"row_groups\[0\]\[1\] = 0 is not a row of group 1"),
    ((G([0]), G([0, 0, 0])), ValueError, r"puts row 2 in group 0, but input_ids\[2\] = 9 differs"),
])
def test_bad_row_groups_raise_before_touching_the_cache(row_groups, error, match):
    model, kv, before, batch = _decode_batch()
    with pytest.raises(error, match=match):
        model(kv_cache=kv, **batch, row_groups=row_groups)
    assert torch.equal(kv, before)
    assert model(kv_cache=kv, **batch, row_groups=OK).shape == (3, 30)  # still usable


def test_a_row_that_attends_apart_leaves_its_group():
    """_split_groups: a row whose values differ in any bit from its group's first row's becomes a
    group of its own, carrying its group's residual row."""
    from ponder.models.llama import _split_groups

    rows = torch.tensor([[1.0, 2.0], [1.0, 2.0], [5.0, 6.0], [1.0, 2.0000002], [5.0, 6.0]])
    firsts, groups = G([0, 2]), G([0, 0, 1, 0, 1])
    x = torch.tensor([[10.0], [20.0]])
    f, g, x2 = _split_groups(rows, firsts, groups, x)
    assert f.tolist() == [0, 2, 3] and g.tolist() == [0, 0, 1, 2, 1] and x2.tolist() == [[10.0], [20.0], [10.0]]
    assert groups.tolist() == [0, 0, 1, 0, 1]  # the caller's groups are left alone
    f, g, x2 = _split_groups(rows[[0, 1, 2, 1, 4]], firsts, groups, x)
    assert f is firsts and g is groups and x2 is x  # nothing apart: the same objects back


def test_row_groups_need_a_decode_batch():
    model = _model(SMALL)
    seqs = PagedSequences(num_pages=20, page_size=4)
    kv = model.allocate_kv_cache(20, 4)
    a, b = seqs.new(), seqs.new()
    batch = seqs.step([a, b], [[1, 2], [1, 2]])  # a prefill: 4 rows of 2 sequences
    with pytest.raises(ValueError, match="row_groups serves decode batches"):
        model(kv_cache=kv, **batch, row_groups=(G([0, 1]), G([0, 1, 0, 1])))
    assert not kv.any()


def test_positions_must_agree_within_a_group():
    model = _model(SMALL)
    seqs = PagedSequences(num_pages=20, page_size=4)
    kv = model.allocate_kv_cache(20, 4)
    a, b = seqs.new(), seqs.new()
    model(kv_cache=kv, **seqs.step([a, b], [[1, 2, 3], [1, 2]]))
    before = kv.clone()
    batch = seqs.step([a, b], [[5], [5]])  # same token, positions 3 and 2
    with pytest.raises(ValueError, match=r"positions\[1\] = 2 differs from positions\[0\] = 3"):
        model(kv_cache=kv, **batch, row_groups=(G([0]), G([0, 0])))
    assert torch.equal(kv, before)


def test_a_plan_must_cover_all_rows_or_the_first_rows():
    model, kv, before, batch = _decode_batch()
    plan = plan_attention(batch["block_tables"], batch["seq_lens"], 4)
    for queries in ([0], [0, 1, 2]):  # 1 query: neither U=2 nor T=3; then all 3 rows
        cut = plan.for_queries(np.array(queries)).to("cpu")
        if len(queries) == 1:
            with pytest.raises(ValueError, match=r"decode_plan must cover all T=3 rows or the 2 first rows, got 1"):
                model(kv_cache=kv, **batch, decode_plan=cut, row_groups=OK)
            assert torch.equal(kv, before)
        else:
            assert model(kv_cache=kv, **batch, decode_plan=cut, row_groups=OK).shape == (3, 30)
