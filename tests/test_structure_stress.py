"""Seeded random operations on Forest and PageTable, valid and invalid mixed.

After every invalid call the structure must be exactly as before (every exported array, every
counter); after every call its invariants must hold. Both structures are kept small (trees and
sequences are released as they grow) so that the checks, which look at everything, stay cheap.
"""

import random

import numpy as np
import pytest

from ponder.forest import NO_NODE, NO_PAGES, NO_PARENT, Forest
from ponder.page_table import KVCacheFull, PageTable

BAD = (ValueError, IndexError, TypeError)
FOREST_OPS = 26_000
TABLE_OPS = 26_000


# --------------------------------------------------------------------------------------- Forest
def forest_state(f):
    return {"sizes": (f.num_nodes, f.num_alive, f.num_tokens), **f.export()}


def same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def check_forest(f):
    s = f.export()
    n = f.num_nodes
    parent, alive, depth, tree = s["parent"], s["alive"], s["depth"], s["tree"]
    assert all(v.shape[0] == n for k, v in s.items() if k != "tokens")
    assert alive.sum() == f.num_alive
    root = parent == NO_PARENT
    kid = ~root
    assert (depth[root] == 0).all() and (tree[root] == np.nonzero(root)[0]).all()
    assert (depth[kid] == depth[parent[kid]] + 1).all(), "depth != parent depth + 1"
    assert (tree[kid] == tree[parent[kid]]).all()
    assert (alive[parent[kid & alive]]).all(), "a live node under a released parent"
    assert (s["visits"] >= 0).all() and (s["virtual_loss"] >= 0).all()
    assert (s["prior"] >= 0).all() and np.isfinite(s["prior"]).all() and np.isfinite(s["value_sum"]).all()
    assert not (s["pending"] & ~alive).any()
    assert ((s["page_seq"] >= 0) | (s["page_seq"] == NO_PAGES)).all()
    assert (s["token_offset"] + s["token_len"] <= f.num_tokens).all() and (s["tokens"] >= 0).all()
    # children lists: each live non-root node is linked exactly once, from its own parent's list
    live = np.nonzero(alive)[0]
    links = np.concatenate([s["first_child"][live], s["next_sibling"][live[~root[live]]]])
    links = links[links != NO_NODE]
    assert alive[links].all() and (~root[links]).all()
    incoming = np.bincount(links, minlength=n)
    assert (incoming[live[~root[live]]] == 1).all() and incoming.sum() == (~root[live]).sum()
    counted = np.bincount(parent[kid & alive], minlength=n)
    assert (s["num_children"][live] == counted[live]).all(), "num_children disagrees with the parents"
    has = s["first_child"][live] != NO_NODE
    assert (has == (counted[live] > 0)).all()
    fc, lc = s["first_child"][live[has]], s["last_child"][live[has]]
    assert (parent[fc] == live[has]).all() and (parent[lc] == live[has]).all() and (s["next_sibling"][lc] == NO_NODE).all()
    assert not (s["terminal"][live] & has).any(), "a terminal node has children"
    # virtual loss of a live node = pending live leaves in its subtree
    want = (s["pending"] & alive).astype(np.int64)
    for d in range(int(depth.max(initial=0)), 0, -1):
        at = np.nonzero(alive & (depth == d))[0]
        np.add.at(want, parent[at], want[at])
    assert (s["virtual_loss"][live] == want[live]).all(), "virtual loss disagrees with the pending leaves"


def forest_step(f, rng, nrng):
    """One random call: returns True when it was meant to be invalid (and raised)."""
    n = f.num_nodes
    a = f.arrays()
    alive, parent, term, kids = a["alive"], a["parent"], a["terminal"], a["num_children"]
    live, dead = np.nonzero(alive)[0], np.nonzero(~alive)[0]
    roots = live[parent[live] == NO_PARENT].tolist()
    open_ = live[~term[live] & (a["depth"][live] < 5)].tolist()
    op = rng.random()
    if not roots or (op < 0.05 and len(roots) < 6):
        f.add_root(nrng.integers(0, 50, rng.randrange(4)).tolist())
        return False
    if op < 0.30 and open_:
        parents = rng.sample(open_, min(len(open_), rng.randrange(1, 4)))
        counts = [rng.randrange(1, 4) for _ in parents]
        c = sum(counts)
        lens = nrng.integers(0, 3, c)
        f.add_children(parents, counts, nrng.random(c), nrng.integers(0, 50, int(lens.sum())), np.r_[0, np.cumsum(lens)],
                       rewards=nrng.random(c), terminal=nrng.random(c) < 0.2, page_seqs=nrng.integers(-1, 9, c))
        return False
    if op < 0.40:
        sel = f.select(rng.sample(roots, rng.randrange(1, len(roots) + 1)), rng.randrange(1, 4), rng.random() * 2,
                       rng.random(), rng.random(), rng.choice([0.0, 1.0]), rng.random())
        picked = sel[sel != NO_NODE]
        if picked.size and rng.random() < 0.7:
            f.backup(picked, nrng.random(picked.size), rng.choice([1.0, 0.9]))
        elif picked.size:
            f.cancel(picked)
        return False
    if op < 0.45 and len(live) > 1:
        f.release(int(rng.choice(live[1:])) if f.num_alive > 40 or rng.random() < 0.3 else int(rng.choice(live)))
        return False
    if op < 0.52 and len(live):
        nodes = nrng.choice(live, rng.randrange(1, 4))
        rng.choice([f.set_path_scores, f.set_rewards, f.set_priors])(nodes, nrng.random(nodes.size))
        return False
    if op < 0.55 and len(live):
        leaves = live[kids[live] == 0].tolist()
        if leaves:
            f.set_terminal([rng.choice(leaves)], [rng.random() < 0.5])
        return False
    if op < 0.58 and len(live):
        f.top_k(nrng.permutation(live)[: rng.randrange(1, 5)], rng.randrange(1, 4), rng.choice(["path_score", "value", "visits"]))
        f.frontier(roots)
        f.best_path(rng.choice(roots), rng.choice(["visits", "value", "score"]))
        f.path_tokens(int(rng.choice(live)))
        return False
    if f.num_alive > 60:  # keep the forest small: drop a whole tree
        f.release(rng.choice(roots))
        return False
    before = forest_state(f)
    bad_node = rng.choice([-1, n, n + 7, 2**31 - 1] + ([int(rng.choice(dead))] * 3 if len(dead) else []))
    good = int(rng.choice(live))
    inner = live[kids[live] > 0].tolist()
    nonroot = live[parent[live] != NO_PARENT].tolist()
    calls = [
        lambda: f.add_children([good, bad_node], [1, 1], [0.5, 0.5]),
        lambda: f.add_children([good], [1], [np.nan]),
        lambda: f.add_children([good], [2], [0.5, -0.1]),
        lambda: f.add_children([good], [1], [0.5], tokens=[-1], tokens_indptr=[0, 1]),
        lambda: f.add_children([good], [1], [0.5], page_seqs=[-3]),
        lambda: f.add_children([good], [0], []),
        lambda: f.add_roots([1, 2], [0, 3]),
        lambda: f.release(bad_node),
        lambda: f.select([roots[0], bad_node], 2, 1.0, 1.0, 0.0),
        lambda: f.select(roots, 0, 1.0, 1.0, 0.0),
        lambda: f.select(roots, 2, 1.0, np.inf, 0.0),
        lambda: f.backup([good, bad_node], [0.5, 0.5]),
        lambda: f.backup([good], [np.inf]),
        lambda: f.cancel([good, bad_node]),
        lambda: f.set_priors([good, bad_node], [0.1, 0.1]),
        lambda: f.set_path_scores([good], [np.nan]),
        lambda: f.set_page_seqs([good], [-2]),
        lambda: f.top_k([good, good], 1),
        lambda: f.best_path(bad_node),
        lambda: f.path_tokens(bad_node),
    ]
    if inner:
        calls.append(lambda: f.set_terminal([rng.choice(inner)], [True]))
    if nonroot:
        calls.append(lambda: f.select([rng.choice(nonroot)], 1, 1.0, 1.0, 0.0))
        calls.append(lambda: f.frontier([rng.choice(nonroot)]))
    term_live = live[term[live]].tolist()
    if term_live:
        calls.append(lambda: f.add_children([rng.choice(term_live)], [1], [0.5]))
    call = rng.choice(calls)
    with pytest.raises(BAD):
        call()
    assert same(before, forest_state(f)), "an invalid call changed the forest"
    return True


def test_forest_random_operations():
    rng, nrng = random.Random(1234), np.random.default_rng(1234)
    invalid, made = 0, 0
    for i in range(FOREST_OPS):
        if i % 1000 == 0:  # ids are never reused: a fresh forest keeps N, and the checks, small
            made += f.num_nodes if i else 0
            f = Forest(capacity=8)
        invalid += forest_step(f, rng, nrng)
        check_forest(f)
    assert invalid > FOREST_OPS // 10 and made > 10_000  # both kinds of call were exercised


# ------------------------------------------------------------------------------------ PageTable
def table_state(t):
    live = t.live_seqs().tolist()
    return {"stats": t.stats(), "refcounts": t.refcounts().tolist(), "free": t.free_pages().tolist(),
            "evictable": t.evictable_pages().tolist(), "live": live,
            "seqs": [(t.pages(s).tolist(), t.num_tokens(s)) for s in live]}


def check_table(t, state=None):
    s = state or table_state(t)
    st, rc = s["stats"], np.asarray(s["refcounts"])
    P, S = st["num_pages"], st["page_size"]
    assert (rc >= 0).all(), "negative refcount"
    want = np.zeros(P, np.int64)
    for pages, n in s["seqs"]:
        assert len(pages) == -(-n // S), "page list does not cover the tokens"
        assert len(set(pages)) == len(pages)
        np.add.at(want, pages, 1)
    assert (rc == want).all(), "refcounts disagree with the live sequences' pages"
    free, evictable = set(s["free"]), set(s["evictable"])
    assert len(free) == len(s["free"]) and not (free & evictable)
    assert all(rc[p] == 0 for p in free | evictable), "a page both free and referenced"
    assert all(t.is_cached(p) for p in evictable)
    assert st["free"] == len(free) and st["evictable"] == len(evictable) and st["used"] == int((rc > 0).sum())
    assert st["free"] + st["used"] + st["evictable"] == P
    assert st["num_seqs"] == len(s["live"]) and st["shared"] == int((rc > 1).sum())


STEMS = [[(3 * j + i) % 5 for j in range(24)] for i in range(3)]


def table_step(t, rng, freed):
    """One random call: returns True when it was meant to be invalid (and raised)."""
    live = t.live_seqs().tolist()
    S = t.page_size
    op = rng.random()
    if op < 0.25 or not live:
        toks = STEMS[rng.randrange(3)][: rng.randrange(1, 20)] + [rng.randrange(5) for _ in range(rng.randrange(3))]
        if t.can_allocate(toks):
            t.allocate(toks)
        else:
            before = table_state(t)
            with pytest.raises(KVCacheFull):
                t.allocate(toks)
            assert table_state(t) == before, "a refused allocate changed the table"
            return True
        return False
    if op < 0.40:
        seqs = rng.sample(live, min(len(live), rng.randrange(1, 3)))
        if rng.random() < 0.5:
            t.fork(seqs[0])
        else:
            t.fork_many(seqs + seqs[:1])
        return False
    if op < 0.60:
        seqs = rng.sample(live, min(len(live), rng.randrange(1, 4)))
        counts = [rng.randrange(0, 2 * S) for _ in seqs]
        tokens = None if rng.random() < 0.2 else [rng.randrange(5) for _ in range(sum(counts))]
        if t.can_append(seqs, counts):
            t.append(seqs, counts, tokens)
            return False
        before = table_state(t)
        with pytest.raises(KVCacheFull):
            t.append(seqs, counts, tokens)
        assert table_state(t) == before, "a refused append changed the table"
        return True
    if op < 0.75 or len(live) > 12:
        gone = rng.sample(live, min(len(live), rng.randrange(1, 3)))
        if len(gone) == 1:
            t.free(gone[0])
        else:
            t.free_many(gone)
        freed.extend(gone)
        return False
    if op < 0.78:
        t.batch_tables(live, pad=-1)
        t.slot_of(live[0], rng.randrange(t.num_tokens(live[0])))
        return False
    before = table_state(t)
    bad = rng.choice([-1, 10**6, 2**31 - 1] + (freed[-3:] if freed else []))
    good = rng.choice(live)
    calls = [
        lambda: t.fork(bad),
        lambda: t.fork_many([good, bad]),
        lambda: t.free(bad),
        lambda: t.free_many([good, bad]),
        lambda: t.free_many([good, good]),
        lambda: t.append([good, bad], [1, 1]),
        lambda: t.append([good, good], [1, 1]),
        lambda: t.append([good], [-1]),
        lambda: t.append([good], [2], [1]),
        lambda: t.append([good], [1], [-4]),
        lambda: t.allocate([]),
        lambda: t.allocate([1, -2]),
        lambda: t.allocate([1.5]),
        lambda: t.pages(bad),
        lambda: t.num_tokens(bad),
        lambda: t.slot_of(good, t.num_tokens(good)),
        lambda: t.refcount(t.num_pages),
        lambda: t.batch_tables([good, bad]),
        lambda: t.batch_tables([good], max_pages=len(t.pages(good)) - 1) if len(t.pages(good)) else t.fork(-1),
        lambda: t.can_append([good, good], [1, 1]),
    ]
    with pytest.raises(BAD):
        rng.choice(calls)()
    assert table_state(t) == before, "an invalid call changed the table"
    return True


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_page_table_random_operations(prefix_cache):
    rng = random.Random(99 + prefix_cache)
    t = PageTable(24, 4, prefix_cache=prefix_cache)
    invalid, freed = 0, []
    for _ in range(TABLE_OPS // 2):
        invalid += table_step(t, rng, freed)
        check_table(t)
    assert invalid > TABLE_OPS // 40 and t.stats()["peak_used"] == t.num_pages  # full pools and bad calls both seen
