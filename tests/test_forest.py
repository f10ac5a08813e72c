"""Literal, hand-computed cases for every Forest operation, plus bad input."""

import gc
import threading

import numpy as np
import pytest

from ponder.forest import NO_NODE, NO_PAGES, NO_PARENT, Forest


def star(priors, prompt=(1, 2)):
    """One root (id 0, tokens ``prompt``) with one child per prior (ids 1..), child i holding [10 + i]."""
    f = Forest()
    f.add_root(list(prompt))
    n = len(priors)
    f.add_children([0], [n], priors, tokens=[10 + i for i in range(n)], tokens_indptr=list(range(n + 1)))
    return f


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# --- structure -------------------------------------------------------------------------------------
def test_add_roots_and_children_literal():
    f = Forest(capacity=1)
    roots = f.add_roots([7, 8, 9], [0, 2, 2, 3])
    assert roots.tolist() == [0, 1, 2]
    kids = f.add_children([2, 0, 2], [2, 1, 1], [0.1, 0.2, 0.3, 0.4], tokens=[5, 6, 7],
                          tokens_indptr=[0, 1, 1, 3, 3], rewards=[1, 2, 3, 4], terminal=[False, True, False, False],
                          page_seqs=[NO_PAGES, 4, 5, NO_PAGES])
    assert kids.tolist() == [3, 4, 5, 6]
    assert f.children(2).tolist() == [3, 4, 6]  # appended after existing siblings, in call order
    assert f.children(0).tolist() == [5]
    assert f.children(1).tolist() == []
    assert f.parent.tolist() == [NO_PARENT, NO_PARENT, NO_PARENT, 2, 2, 0, 2]
    assert f.depth.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert f.tree.tolist() == [0, 1, 2, 2, 2, 0, 2]
    assert f.num_children.tolist() == [1, 0, 3, 0, 0, 0, 0]
    assert f.terminal.tolist() == [False] * 4 + [True, False, False]
    assert f.path_score.tolist() == f.reward.tolist() == [0, 0, 0, 1, 2, 3, 4]  # path_scores default = rewards
    assert f.page_seq.tolist() == [NO_PAGES] * 4 + [4, 5, NO_PAGES]
    assert f.prior.tolist() == pytest.approx([1, 1, 1, 0.1, 0.2, 0.3, 0.4], rel=1e-7)  # float32 storage
    assert f.node_tokens(0).tolist() == [7, 8] and f.node_tokens(1).tolist() == []
    assert f.path_tokens(5).tolist() == [7, 8, 6, 7]
    assert f.path_tokens(6).tolist() == [9]
    assert (f.num_nodes, f.num_alive, f.num_tokens) == (7, 7, 6)


def test_add_root_defaults_and_empty_batches():
    f = Forest()
    assert f.add_root() == 0 and f.node_tokens(0).tolist() == []
    assert f.add_roots([], [0]).tolist() == []
    assert f.add_children([], [], []).tolist() == []
    assert f.add_children([0], [2], [0.5, 0.5], path_scores=[3, 4]).tolist() == [1, 2]
    assert f.path_score.tolist() == [0, 3, 4] and f.reward.tolist() == [0, 0, 0]


# --- select ----------------------------------------------------------------------------------------
def test_select_puct_pick():
    f = star([0.5, 0.3, 0.2])
    f.backup([1], [0.4])
    f.backup([2], [0.9])
    # root N_eff = 2, sqrt(2) = 1.41421
    #   child 1: Q = 0.4/1 = 0.4, U = 1 * 0.5 * 1.41421 / 2 = 0.35355 -> 0.75355
    #   child 2: Q = 0.9,         U = 0.3 * 1.41421 / 2     = 0.21213 -> 1.11213  <- max
    #   child 3: Q = fpu = 0,     U = 0.2 * 1.41421 / 1     = 0.28284 -> 0.28284
    assert f.select([0], 1, c_puct=1.0, virtual_loss=1.0, fpu=0.0).tolist() == [[2]]
    f.cancel([2])
    # fpu = 1: child 3 scores 1 + 0.28284 = 1.28284 > 1.11213
    assert f.select([0], 1, c_puct=1.0, virtual_loss=1.0, fpu=1.0).tolist() == [[3]]
    f.cancel([3])
    # c_puct = 0 is greedy on Q: child 2 (0.9) beats fpu 0.85
    assert f.select([0], 1, c_puct=0.0, virtual_loss=1.0, fpu=0.85).tolist() == [[2]]


def test_select_ties_go_to_earliest_sibling():
    f = star([0.25, 0.25, 0.25, 0.25])
    assert f.select([0], 1, 1.0, 1.0, 0.0).tolist() == [[1]]


def test_select_virtual_loss_spreads_leaves():
    f = star([0.5, 0.3, 0.2])
    # descent 1: N_eff(root) = 0 -> sqrt(max(0,1)) = 1; U = priors -> child 1 (0.5)
    # descent 2: N_eff(root) = 1: child 1 Q = (0 - 1*1)/1 = -1, U = 0.5/2 -> -0.75; child 2 0.3; child 3 0.2 -> 2
    # descent 3: N_eff(root) = 2, sqrt 1.41421: child 1 -0.646, child 2 -0.788, child 3 0.283 -> 3
    # descent 4: N_eff(root) = 3, sqrt 1.73205: child 1 -0.567, child 2 -0.740, child 3 -0.827 -> 1, already
    #            pending: the tree stops, the row is padded
    assert f.select([0], 4, c_puct=1.0, virtual_loss=1.0, fpu=0.0).tolist() == [[1, 2, 3, NO_NODE]]
    assert f.virtual_loss.tolist() == [3, 1, 1, 1]
    assert f.pending.tolist() == [False, True, True, True]
    assert f.visits.tolist() == [0, 0, 0, 0]


def test_select_many_trees_and_padding():
    f = Forest()
    f.add_roots([], [0, 0, 0])
    f.add_children([1], [2], [0.6, 0.4])
    # tree 0: the bare root is the only leaf; tree 1: children 2 then 3 (virtual loss moves descent 2)
    out = f.select([0, 1], 3, c_puct=1.0, virtual_loss=1.0, fpu=0.0)
    assert out.dtype == np.int32 and out.shape == (2, 3)
    assert out.tolist() == [[0, NO_NODE, NO_NODE], [2, 3, NO_NODE]]


def test_select_terminal_leaf_is_selected_once():
    f = star([0.9, 0.1])
    f.set_terminal([1], [True])
    # child 1 (terminal) wins descent 1; descent 2: child 1 -1 + 0.9/2 = -0.55 < child 2 0.1 -> 2
    assert f.select([0], 3, 1.0, 1.0, 0.0).tolist() == [[1, 2, NO_NODE]]


def test_progressive_widening_thresholds():
    f = star([1.0])  # root with one child; pw_k = 1, pw_alpha = 0.5 -> allowed children = sqrt(max(N, 1))
    sel = lambda: f.select([0], 1, 1.0, 1.0, 0.0, pw_k=1.0, pw_alpha=0.5)[0, 0]
    assert sel() == 1  # N = 0: 1 < sqrt(1) is false -> descend
    f.backup([1], [0.5])
    assert sel() == 1  # N = 1: 1 < 1 false
    f.backup([1], [0.5])
    assert sel() == 0  # N = 2: 1 < 1.414 -> the root is returned for widening
    f.cancel([0])
    f.add_children([0], [1], [0.5])
    f.backup([1], [0.5])
    for n in range(3, 5):  # N = 3, 4: 2 < sqrt(N) false (sqrt(4) = 2 exactly)
        assert sel() != 0
        f.backup([f.pending.nonzero()[0][0]], [0.5])
        assert f.visits[0] == n + 1
    assert sel() == 0  # N = 5: 2 < 2.236
    f.cancel([0])
    # pw_alpha = 0 caps the children at pw_k whatever N is: 2 < 3 -> widen, even at N = 5
    assert f.select([0], 1, 1.0, 1.0, 0.0, pw_k=3.0, pw_alpha=0.0)[0, 0] == 0


def test_select_descends_through_pending_internal_node():
    f = star([0.5])
    assert f.select([0], 1, 1.0, 1.0, 0.0).tolist() == [[1]]
    f.add_children([1], [2], [0.7, 0.3])  # 1 stays pending: adding children does not clear it
    assert f.pending[1] and f.virtual_loss[1] == 1
    # next descent passes 1 and picks child 2 (prior 0.7, Q = fpu = 0 for both)
    assert f.select([0], 1, 1.0, 1.0, 0.0).tolist() == [[2]]
    assert f.virtual_loss.tolist() == [2, 2, 1, 0]


# --- backup / cancel -------------------------------------------------------------------------------
def test_backup_with_discount():
    f = star([1.0])
    f.add_children([1], [1], [1.0])  # chain 0 -> 1 -> 2
    f.backup([2], [1.0], discount=0.5)
    assert f.visits.tolist() == [1, 1, 1]
    assert f.value_sum.tolist() == [0.25, 0.5, 1.0]  # powers of two: exact
    f.backup([1, 2], [-2.0, 0.5], discount=1.0)
    assert f.visits.tolist() == [3, 3, 2]
    assert f.value_sum.tolist() == [-1.25, -1.0, 1.5]


def test_pending_cancel_and_backup_remove_virtual_loss():
    f = star([0.5, 0.5])
    assert f.select([0], 2, 1.0, 1.0, 0.0).tolist() == [[1, 2]]
    assert f.virtual_loss.tolist() == [2, 1, 1]
    f.cancel([1])
    assert f.virtual_loss.tolist() == [1, 0, 1] and f.pending.tolist() == [False, False, True]
    assert f.visits.tolist() == [0, 0, 0] and f.value_sum.tolist() == [0, 0, 0]
    f.cancel([1])  # not pending: unchanged
    assert f.virtual_loss.tolist() == [1, 0, 1]
    f.backup([1], [1.0])  # not pending: visits only, node 2 keeps its virtual loss on the root
    assert f.virtual_loss.tolist() == [1, 0, 1] and f.visits.tolist() == [1, 1, 0]
    f.backup([2], [0.5])
    assert f.virtual_loss.tolist() == [0, 0, 0] and not f.pending.any()
    assert f.visits.tolist() == [2, 1, 1] and f.value_sum.tolist() == [1.5, 1.0, 0.5]


# --- queries ---------------------------------------------------------------------------------------
def two_trees():
    f = Forest()
    f.add_roots([], [0, 0, 0])
    f.add_children([0, 1], [3, 2], [0.1, 0.5, 0.1, 0.2, 0.2], rewards=[3, 1, 2, 5, 4],
                   path_scores=[0.5, 0.9, 0.5, 0.7, 0.9])  # tree 0: 2 3 4; tree 1: 5 6
    return f


def test_top_k_by_tree_and_ties():
    f = two_trees()
    frontier = [5, 2, 3, 4, 6]
    # tree 1 appears first; tie 2 vs 4 (0.5) -> lower id
    assert f.top_k(frontier, 2, "path_score").tolist() == [6, 5, 3, 2]
    assert f.top_k(frontier, 3, "path_score", by_tree=False).tolist() == [3, 6, 5]
    assert f.top_k(frontier, 9, "path_score", by_tree=False).tolist() == [3, 6, 5, 2, 4]
    assert f.top_k(frontier, 1, "reward").tolist() == [5, 2]
    assert f.top_k(frontier, 2, "prior", by_tree=False).tolist() == [3, 5]  # 0.5, then 0.2 tie 5 < 6
    f.backup([2, 4, 4, 6], [0.25, 1.0, 0.0, -1.0])  # means: 2 -> 0.25, 4 -> 0.5, 6 -> -1; 3 and 5 unvisited
    assert f.top_k(frontier, 3, "value", by_tree=False).tolist() == [4, 2, 6]
    assert f.top_k(frontier, 5, "value", by_tree=False).tolist() == [4, 2, 6, 3, 5]  # -inf ties by id
    assert f.top_k(frontier, 1, "visits").tolist() == [6, 4]
    assert f.top_k([], 3).tolist() == []


def best_path_tree():
    f = star([0.4, 0.3, 0.3])  # 0 -> 1, 2, 3
    f.add_children([1], [2], [0.5, 0.5])  # 1 -> 4, 5
    for node, value in [(4, 1.0), (4, 1.0), (5, 0.0), (2, 0.5), (2, 0.5), (2, 0.5), (3, 1.0)]:
        f.backup([node], [value])
    return f  # visits/means: 1: 3 / 0.667, 2: 3 / 0.5, 3: 1 / 1.0, 4: 2 / 1.0, 5: 1 / 0.0


def test_best_path_visits_and_value():
    f = best_path_tree()
    assert f.best_path(0, "visits").tolist() == [0, 1, 4]  # 1 and 2 tie on 3 visits; 1 has the higher mean
    assert f.best_path(0, "value").tolist() == [0, 3]
    f.add_children([3], [2], [0.9, 0.1])  # 6, 7 unvisited: by value takes the first child
    assert f.best_path(0, "value").tolist() == [0, 3, 6]
    f.backup([7], [-1.0])
    assert f.best_path(0, "value").tolist() == [0, 1, 4]  # node 3's mean is now 0.0 < node 1's 0.667
    f.backup([7, 7], [2.0, 2.0])  # node 3: 4 visits (most), mean 1.0 (highest)
    assert f.best_path(0, "visits").tolist() == [0, 3, 7]
    assert f.best_path(0, "value").tolist() == [0, 3, 7]  # 7 is the only visited child of 3


def test_best_path_visits_ties_to_earlier_sibling():
    f = star([0.5, 0.5])
    assert f.best_path(0, "visits").tolist() == [0, 1]  # both unvisited
    f.backup([1, 2], [0.5, 0.5])
    assert f.best_path(0, "visits").tolist() == [0, 1]


def test_best_path_score():
    f = best_path_tree()
    f.set_path_scores([4, 5, 2, 3], [0.99, 0.4, 0.7, 0.4])
    # no terminal node: best leaf by path_score -> 4
    assert f.best_path(0, "score").tolist() == [0, 1, 4]
    f.set_terminal([5, 3], [True, True])
    # terminal nodes 5 and 3 tie at 0.4 -> lower id 3; node 4 (0.99) is not terminal
    assert f.best_path(0, "score").tolist() == [0, 3]
    f.set_path_scores([5], [0.5])
    assert f.best_path(0, "score").tolist() == [0, 1, 5]
    g = Forest()
    g.add_root([3])
    assert g.best_path(0, "score").tolist() == [0]


def test_frontier_and_path_tokens():
    f = star([0.5, 0.5], prompt=(1, 2))  # children 1 [10], 2 [11]
    f.add_children([1], [2], [0.5, 0.5], tokens=[20, 21, 22], tokens_indptr=[0, 2, 3])  # 3 [20 21], 4 [22]
    f.set_terminal([4], [True])
    f.add_root([9])  # tree 5
    assert f.frontier([5, 0]).tolist() == [5, 3, 2]  # preorder per tree; terminal 4 excluded
    assert f.path_tokens(3).tolist() == [1, 2, 10, 20, 21]
    assert f.path_tokens(4).tolist() == [1, 2, 10, 22]
    assert f.node_tokens(3).tolist() == [20, 21]


# --- release ---------------------------------------------------------------------------------------
def test_release_returns_pages_and_fixes_ancestors():
    f = star([0.5, 0.3, 0.2])  # 0 -> 1, 2, 3
    f.add_children([2], [2], [0.5, 0.5], page_seqs=[7, NO_PAGES])  # 2 -> 4, 5
    f.add_children([4], [1], [1.0])  # 4 -> 6
    f.set_page_seqs([2, 6, 1], [3, 8, 9])
    f.backup([5], [1.0])
    picked = f.select([0], 3, 1.0, 1.0, 0.0)
    # descent 1: root children 1: 0.5, 2: Q 1 + U 0.15 = 1.15 -> 2; then 4: 0.5, 5: 1 + 0.25 -> 5
    # descent 2 (root N_eff 2): 1: 0.707, 2: 0 + 0.141, 3: 0.283 -> 1; descent 3: 1: -0.567, 2: 0.173, 3: 0.346 -> 3
    assert picked.tolist() == [[5, 1, 3]]  # one pending leaf inside the subtree released below
    assert f.virtual_loss[0] == 3
    assert f.release(2).tolist() == [3, 7, 8]  # preorder 2, 4, 6, 5
    assert f.alive.tolist() == [True, True, False, True, False, False, False]
    assert f.children(0).tolist() == [1, 3] and f.num_children[0] == 2
    assert f.next_sibling[1] == 3 and f.last_child[0] == 3
    assert f.virtual_loss[0] == 2  # pending leaf 5 no longer counts
    assert f.visits[0] == 1  # statistics already backed up are kept
    assert f.num_alive == 3
    with pytest.raises(ValueError, match="node 6 was released"):
        f.backup([6], [0.0])
    with pytest.raises(ValueError, match="node 2 was released"):
        f.release(2)
    assert f.frontier([0]).tolist() == [1, 3]
    # last child released: last_child moves back, appends still work
    assert f.release(3).tolist() == []
    assert f.last_child[0] == 1
    assert f.add_children([0], [1], [0.5]).tolist() == [7]
    assert f.children(0).tolist() == [1, 7]


def test_release_root_releases_tree():
    f = two_trees()
    f.set_page_seqs([1, 6], [11, 16])
    assert f.release(1).tolist() == [11, 16]
    assert f.alive.tolist() == [True, False, True, True, True, False, False]
    assert f.num_alive == 4 and f.children(0).tolist() == [2, 3, 4]
    with pytest.raises(ValueError, match="node 1 was released"):
        f.select([1], 1, 1.0, 1.0, 0.0)


# --- arrays ----------------------------------------------------------------------------------------
def test_views_are_read_only_and_survive_growth():
    f = Forest(capacity=2)
    f.add_root([1])
    early = f.visits
    assert early.tolist() == [0]
    with pytest.raises(ValueError):
        early[0] = 5
    f.backup([0], [1.0])
    assert early.tolist() == [1]  # zero-copy: it sees updates while the buffer is current
    tokens_early = f.tokens
    f.add_children([0], [500], np.full(500, 0.002), tokens=np.arange(500), tokens_indptr=np.arange(501))
    f.backup([0], [1.0])
    assert early.tolist() == [1]  # growth replaced the buffer: the old view is a stale snapshot
    assert f.visits.shape == (501,) and f.visits[0] == 2
    assert tokens_early.tolist() == [1] and f.tokens.shape == (501,)
    views = f.arrays()
    del f
    gc.collect()
    assert early.tolist() == [1] and views["visits"][0] == 2 and views["tokens"][-1] == 499  # buffers outlive forest


def test_arrays_and_export():
    f = two_trees()
    views, exported = f.arrays(), f.export()
    assert set(exported) == {
        "parent", "first_child", "last_child", "next_sibling", "num_children", "depth", "visits", "value_sum",
        "virtual_loss", "prior", "reward", "path_score", "terminal", "token_offset", "token_len", "page_seq",
        "tree", "alive", "pending", "tokens",
    }
    assert_same(views, exported)
    assert exported["value_sum"].dtype == np.float64 and exported["terminal"].dtype == np.bool_
    assert exported["first_child"].tolist() == [2, 5, NO_NODE, NO_NODE, NO_NODE, NO_NODE, NO_NODE]
    exported["visits"][0] = 99  # an owned copy
    assert f.visits[0] == 0 and exported["visits"].flags.writeable


# --- bad input -------------------------------------------------------------------------------------
def bad_cases():
    """(name, call, exception, message regex) on ``bad_input_forest()``."""
    nan, inf = float("nan"), float("inf")
    return [
        ("id out of range", lambda f: f.select([9], 1, 1.0, 1.0, 0.0), IndexError, r"roots\[0\]=9 is out of range \[0, 5\)"),
        ("negative id", lambda f: f.backup([0, -2], [0.0, 0.0]), IndexError, r"nodes\[1\]=-2 is out of range"),
        ("id beyond int32", lambda f: f.cancel([2**40]), IndexError, "outside the int32 range"),
        ("scalar id out of range", lambda f: f.path_tokens(5), IndexError, r"node=5 is out of range \[0, 5\)"),
        ("released id", lambda f: f.backup([3], [0.0]), ValueError, r"nodes\[0\]: node 3 was released"),
        ("released parent", lambda f: f.add_children([3], [1], [1.0]), ValueError, "node 3 was released"),
        ("released release", lambda f: f.release(3), ValueError, "node 3 was released"),
        ("not a root", lambda f: f.select([1], 1, 1.0, 1.0, 0.0), ValueError, "node 1 is not a root"),
        ("not a root best_path", lambda f: f.best_path(2), ValueError, "node 2 is not a root"),
        ("terminal parent", lambda f: f.add_children([1, 4], [1, 1], [1.0, 1.0]), ValueError,
         r"parents\[1\]: node 4 is terminal"),
        ("terminal with children", lambda f: f.set_terminal([0], [True]), ValueError, "only a leaf"),
        ("NaN prior", lambda f: f.add_children([1], [1], [nan]), ValueError, r"priors\[0\]=nan is not finite"),
        ("inf value", lambda f: f.backup([1], [inf]), ValueError, r"values\[0\]=inf is not finite"),
        ("float32 overflow", lambda f: f.set_rewards([1], [1e39]), ValueError, "not finite as float32"),
        ("NaN score", lambda f: f.set_path_scores([1], [nan]), ValueError, "not finite"),
        ("NaN reward", lambda f: f.add_children([1], [1], [1.0], rewards=[nan]), ValueError, "rewards"),
        ("NaN fpu", lambda f: f.select([0], 1, 1.0, 1.0, nan), ValueError, "fpu=nan is not finite"),
        ("count 0", lambda f: f.add_children([1, 2], [1, 0], [1.0]), ValueError, r"counts\[1\]=0 must be >= 1"),
        ("k 0", lambda f: f.select([0], 0, 1.0, 1.0, 0.0), ValueError, "leaves_per_tree=0 must be >= 1"),
        ("top_k k 0", lambda f: f.top_k([1], 0), ValueError, "k=0 must be >= 1"),
        ("negative c_puct", lambda f: f.select([0], 1, -1.0, 1.0, 0.0), ValueError, "c_puct=-1.0 must be >= 0"),
        ("negative prior", lambda f: f.add_children([1], [2], [0.5, -0.1]), ValueError, r"priors\[1\]=-0.1\S* is negative"),
        ("pw_alpha", lambda f: f.select([0], 1, 1.0, 1.0, 0.0, pw_k=1.0, pw_alpha=1.5), ValueError, r"pw_alpha=1.5 must lie in \[0, 1\]"),
        ("discount 0", lambda f: f.backup([1], [0.0], discount=0.0), ValueError, r"discount=0.0 must lie in \(0, 1\]"),
        ("discount > 1", lambda f: f.backup([1], [0.0], discount=1.5), ValueError, "discount=1.5"),
        ("indptr not monotone", lambda f: f.add_children([1], [2], [0.5, 0.5], tokens=[1, 2], tokens_indptr=[0, 2, 1]),
         ValueError, "non-decreasing"),
        ("indptr end", lambda f: f.add_children([1], [2], [0.5, 0.5], tokens=[1, 2, 3], tokens_indptr=[0, 1, 2]),
         ValueError, r"must equal the number of tokens \(3\)"),
        ("indptr length", lambda f: f.add_children([1], [2], [0.5, 0.5], tokens=[1], tokens_indptr=[0, 1]),
         ValueError, "tokens_indptr has length 2 but sum\\(counts\\) \\+ 1 is 3"),
        ("root indptr start", lambda f: f.add_roots([1, 2], [1, 2]), ValueError, r"tokens_indptr\[0\]=1 must be 0"),
        ("negative token", lambda f: f.add_root([4, -1]), ValueError, r"tokens\[1\]=-1 is negative"),
        ("priors length", lambda f: f.add_children([1], [2], [1.0]), ValueError, "priors has length 1 but sum"),
        ("values length", lambda f: f.backup([1, 2], [1.0]), ValueError, r"values has length 1 but len\(nodes\) is 2"),
        ("bad page handle", lambda f: f.set_page_seqs([1], [-3]), ValueError, r"seqs\[0\]=-3 must be a page"),
        ("bad key", lambda f: f.top_k([1], 1, key="score"), ValueError, "key='score' is not one of"),
        ("bad by", lambda f: f.best_path(0, by="prior"), ValueError, "by='prior' is not one of"),
        ("duplicate frontier", lambda f: f.top_k([1, 2, 1], 1), ValueError, "node 1 more than once"),
        ("float ids", lambda f: f.backup(np.array([1.0]), [0.0]), TypeError, "nodes must hold integers, got dtype float64"),
        ("bool ids", lambda f: f.cancel([True]), TypeError, "must hold integers, got dtype bool"),
        ("2-D ids", lambda f: f.select([[0]], 1, 1.0, 1.0, 0.0), TypeError, r"roots must be a 1-D .* shape \(1, 1\)"),
        ("scalar ids", lambda f: f.cancel(1), TypeError, "nodes must be a 1-D"),
        ("string values", lambda f: f.backup([1], ["a"]), TypeError, "values must hold real numbers"),
        ("int flags", lambda f: f.set_terminal([1], [1]), TypeError, "flags must hold booleans"),
        ("float k", lambda f: f.select([0], 2.0, 1.0, 1.0, 0.0), TypeError, "leaves_per_tree must be an int"),
        ("string c_puct", lambda f: f.select([0], 1, "1", 1.0, 0.0), TypeError, "c_puct must be a real number"),
    ]


def bad_input_forest():
    """0 -> 1, 2 (priors 0.5), 3 (released, owned page 4), 4 (terminal); leaf 1 pending."""
    f = star([0.5, 0.5])
    f.add_children([0], [2], [0.1, 0.1], page_seqs=[4, NO_PAGES], terminal=[False, True])
    f.release(3)
    assert f.select([0], 1, 1.0, 1.0, 0.0).tolist() == [[1]]
    return f


@pytest.mark.parametrize("name,call,exc,match", bad_cases(), ids=[c[0] for c in bad_cases()])
def test_bad_input_raises_and_leaves_forest_unchanged(name, call, exc, match):
    f = bad_input_forest()
    before = f.export()
    with pytest.raises(exc, match=match):
        call(f)
    assert_same(f.export(), before)
    # still usable
    f.backup([1], [0.5])
    assert f.visits[0] == 1 and f.virtual_loss[0] == 0


def test_native_core_validates_without_the_facade():
    f = star([0.5, 0.5])
    core = f._core
    before = f.export()
    i32, f32 = np.int32, np.float32
    with pytest.raises(ValueError, match=r"values\[0\]=nan is not finite"):
        core.backup(np.array([1], i32), np.array([np.nan], f32), 1.0)
    with pytest.raises(ValueError, match="discount=0 must lie in"):
        core.backup(np.array([1], i32), np.array([0.5], f32), 0.0)
    with pytest.raises(ValueError, match="leaves_per_tree=0"):
        core.select(np.array([0], i32), 0, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="pw_alpha=-1 must lie"):
        core.select(np.array([0], i32), 1, 1.0, 1.0, 0.0, 1.0, -1.0)
    with pytest.raises(IndexError, match=r"parents\[0\]=7 is out of range"):
        core.add_children(np.array([7], i32), np.array([1], i32), np.array([1], f32), np.array([], i32),
                          np.array([0, 0], np.int64))
    with pytest.raises(ValueError, match=r"counts\[0\]=-1 must be >= 1"):
        core.add_children(np.array([0], i32), np.array([-1], i32), np.array([], f32), np.array([], i32),
                          np.array([0], np.int64))
    with pytest.raises(TypeError, match="roots must be a 1-D array"):
        core.select(np.zeros((1, 1), i32), 1, 1.0, 1.0, 0.0)
    with pytest.raises(TypeError):  # float ids are refused, not truncated
        core.cancel(np.array([1.5]))
    with pytest.raises(ValueError, match="no forest array named 'nope'"):
        core.view("nope")
    assert_same(f.export(), before)


def test_concurrent_calls_are_serialised():
    f = Forest()
    roots = f.add_roots([], np.zeros(9, np.int64))
    errors = []

    def worker(mine):
        try:
            for _ in range(200):
                leaves = f.select(mine, 2, 1.0, 1.0, 0.0)
                leaves = leaves[leaves != NO_NODE]
                f.add_children(leaves, np.full(leaves.size, 2), np.full(2 * leaves.size, 0.5))
                f.backup(leaves, np.full(leaves.size, 0.5))
        except Exception as e:  # surfaced below: a thread's exception would otherwise be lost
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(roots[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    # each thread owns its trees, so interleaving cannot change them: 1 leaf in round 1, then 2 per round
    assert f.visits[roots].tolist() == [1 + 2 * 199] * len(roots)
    assert f.num_nodes - len(roots) == 2 * f.visits[roots].sum()  # two children per backed-up leaf
    assert not f.pending.any() and not f.virtual_loss.any()


def test_set_priors_changes_puct_choice_and_validates():
    f = Forest()
    root = f.add_root([1])
    a, b = f.add_children([root], [2], [0.9, 0.1], [2, 3], [0, 1, 2]).tolist()
    f.backup([a, b], [0.5, 0.5])
    # equal Q, so the prior decides: 0.9 vs 0.1 picks a; after swapping the priors b wins
    assert f.select([root], 1, 1.0, 0.0, 0.0)[0, 0] == a
    f.cancel([a])
    f.set_priors([a, b], [0.1, 0.9])
    np.testing.assert_allclose(f.prior[[a, b]], [0.1, 0.9])
    assert f.select([root], 1, 1.0, 0.0, 0.0)[0, 0] == b
    with pytest.raises(ValueError, match="negative prior"):
        f.set_priors([a], [-0.5])
    with pytest.raises(ValueError, match="not finite"):
        f.set_priors([a], [float("nan")])
    np.testing.assert_allclose(f.prior[[a, b]], [0.1, 0.9])  # unchanged after the refusals
