"""Random operation sequences on the Forest and the plain-Python model (tests/forest_model.py).

Every operation runs on both: results (or the exception type) must agree, the forest's arrays
must equal the model's after every step, and structural invariants are checked on the forest
itself after every step. Two drivers: a hypothesis state machine (shrinkable sequences) and
hypothesis-seeded long programs. Together they run at least 50,000 operations (counted).
"""

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from forest_model import NO_NODE, NO_PARENT, ForestModel
from ponder.forest import Forest

ERRORS = (ValueError, IndexError, TypeError)
KEYS = ("path_score", "value", "reward", "visits", "prior")
# Operation counts: the state machine runs ~13,500 (asserted >= 10,000), the programs ~45,700
# (36,000 steps; a query step makes 6 calls; asserted >= 42,000): >= 52,000 in all. About 40 s of
# CPU time on this machine (0.6 ms per operation, mostly the every-step array comparison).
STATE_MACHINE_OPS = 10_000
PROGRAM_EXAMPLES, PROGRAM_STEPS, PROGRAM_OPS = 120, 300, 42_000


def _plain(x):
    return x.tolist() if isinstance(x, np.ndarray) else x


class Harness:
    """One Forest and one model driven in lockstep by ``step(op, rng)``."""

    def __init__(self):
        self.f = Forest(capacity=2)  # tiny, so growth happens many times
        self.m = ForestModel()
        self.direct = []  # backups that started at each node
        self.ops = 0

    # --- plumbing ------------------------------------------------------------------------------
    def apply(self, what, forest_call, model_call):
        self.ops += 1
        try:
            want, want_err = model_call(self.m), None
        except ERRORS as e:
            want, want_err = None, type(e)
        try:
            got, got_err = forest_call(self.f), None
        except ERRORS as e:
            got, got_err = e, type(e)
        assert got_err is want_err, f"{what}: forest raised {got!r}, model {want_err}"
        if want_err is None:
            assert _plain(got) == want, f"{what}: forest {_plain(got)} != model {want}"
        return want_err is None

    def alive(self):
        return [n for n, a in enumerate(self.m.alive) if a]

    def roots(self):
        return [n for n in self.alive() if self.m.parent[n] == NO_PARENT]

    def pick(self, rng, pool, lo=1, hi=3):
        return rng.sample(pool, min(len(pool), rng.randint(lo, hi))) if pool else []

    def bad_id(self, rng):
        dead = [n for n, a in enumerate(self.m.alive) if not a]
        if dead and rng.random() < 0.6:
            return rng.choice(dead)
        return rng.choice([-1, self.m.num_nodes, self.m.num_nodes + 7])

    @staticmethod
    def value(rng):
        return rng.choice([0.0, 0.5, 1.0, -1.0, 0.25, rng.uniform(-2, 2)])

    # --- operations ------------------------------------------------------------------------------
    def op_add_roots(self, rng):
        toks = [[rng.randrange(50) for _ in range(rng.randint(0, 3))] for _ in range(rng.randint(1, 2))]
        flat = [t for ts in toks for t in ts]
        indptr = np.cumsum([0] + [len(t) for t in toks])
        self.apply("add_roots", lambda f: f.add_roots(flat, indptr), lambda m: m.add_roots(toks))
        self.direct += [0] * len(toks)

    def op_add_children(self, rng):
        m = self.m
        pool = [n for n in self.alive() if not m.terminal[n]]
        pending = [n for n in pool if m.pending[n]]
        parents = self.pick(rng, pending if pending and rng.random() < 0.7 else pool)
        if not parents:
            return self.op_add_roots(rng)
        counts = [rng.randint(1, 3) for _ in parents]
        c = sum(counts)
        priors = [rng.choice([0.0, 0.25, 0.5, rng.random()]) for _ in range(c)]
        toks = [[rng.randrange(50) for _ in range(rng.randint(0, 2))] for _ in range(c)]
        indptr = np.cumsum([0] + [len(t) for t in toks])
        opt = {}
        if rng.random() < 0.5:
            opt["rewards"] = [self.value(rng) for _ in range(c)]
        if rng.random() < 0.3:
            opt["terminal"] = [rng.random() < 0.3 for _ in range(c)]
        if rng.random() < 0.3:
            opt["path_scores"] = [self.value(rng) for _ in range(c)]
        if rng.random() < 0.3:
            opt["page_seqs"] = [rng.choice([-1, rng.randrange(100)]) for _ in range(c)]
        ok = self.apply("add_children",
                        lambda f: f.add_children(parents, counts, priors, [t for ts in toks for t in ts], indptr, **opt),
                        lambda m: m.add_children(parents, counts, priors, toks, **opt))
        if ok:
            self.direct += [0] * c

    def op_select(self, rng):
        roots = self.roots()
        if not roots:
            return self.op_add_roots(rng)
        rs = [rng.choice(roots) for _ in range(rng.randint(1, 3))]  # repeats allowed
        k = rng.randint(1, 4)
        args = (rng.choice([0.0, 0.5, 1.5, rng.uniform(0, 3)]), rng.choice([0.0, 1.0, 3.0]),
                rng.choice([0.0, -1.0, 0.5]))
        pw = (0.0, 0.5) if rng.random() < 0.5 else (rng.choice([0.5, 1.0, 2.0]), rng.choice([0.0, 0.5, 1.0]))
        self.apply("select", lambda f: f.select(rs, k, *args, *pw), lambda m: m.select(rs, k, *args, *pw))

    def op_backup(self, rng):
        pending = [n for n in self.alive() if self.m.pending[n]]
        nodes = self.pick(rng, pending, 0, 4) + self.pick(rng, self.alive(), 0, 1)
        values = [self.value(rng) for _ in nodes]
        discount = rng.choice([1.0, 0.9, 0.5])
        if self.apply("backup", lambda f: f.backup(nodes, values, discount), lambda m: m.backup(nodes, values, discount)):
            for n in nodes:
                self.direct[n] += 1

    def op_cancel(self, rng):
        pending = [n for n in self.alive() if self.m.pending[n]]
        nodes = self.pick(rng, pending, 0, 3) + self.pick(rng, self.alive(), 0, 1)
        self.apply("cancel", lambda f: f.cancel(nodes), lambda m: m.cancel(nodes))

    def op_query(self, rng):
        alive, roots = self.alive(), self.roots()
        if not roots:
            return self.op_add_roots(rng)
        n, r = rng.choice(alive), rng.choice(roots)
        frontier, k, key, by_tree = self.pick(rng, alive, 0, 8), rng.randint(1, 4), rng.choice(KEYS), rng.random() < 0.6
        by = rng.choice(["visits", "value", "score"])
        rs = self.pick(rng, roots, 1, 3)
        self.apply("top_k", lambda f: f.top_k(frontier, k, key, by_tree), lambda m: m.top_k(frontier, k, key, by_tree))
        self.apply("best_path", lambda f: f.best_path(r, by), lambda m: m.best_path(r, by))
        self.apply("frontier", lambda f: f.frontier(rs), lambda m: m.frontier(rs))
        self.apply("path_tokens", lambda f: f.path_tokens(n), lambda m: m.path_tokens(n))
        self.apply("node_tokens", lambda f: f.node_tokens(n), lambda m: m.node_tokens(n))
        self.apply("children", lambda f: f.children(n), lambda m: m.children(n))

    def op_set(self, rng):
        m = self.m
        nodes = self.pick(rng, self.alive(), 1, 3)
        which = rng.randrange(4)
        if which == 0:
            vals = [self.value(rng) for _ in nodes]
            self.apply("set_path_scores", lambda f: f.set_path_scores(nodes, vals), lambda m: m.set_path_scores(nodes, vals))
        elif which == 1:
            vals = [self.value(rng) for _ in nodes]
            self.apply("set_rewards", lambda f: f.set_rewards(nodes, vals), lambda m: m.set_rewards(nodes, vals))
        elif which == 2:
            seqs = [rng.choice([-1, rng.randrange(100)]) for _ in nodes]
            self.apply("set_page_seqs", lambda f: f.set_page_seqs(nodes, seqs), lambda m: m.set_page_seqs(nodes, seqs))
        else:
            flags = [rng.random() < 0.5 and not m.kids[n] for n in nodes]
            self.apply("set_terminal", lambda f: f.set_terminal(nodes, flags), lambda m: m.set_terminal(nodes, flags))

    def op_release(self, rng):
        alive = self.alive()
        if not alive:
            return self.op_add_roots(rng)
        non_roots = [n for n in alive if self.m.parent[n] != NO_PARENT]
        node = rng.choice(non_roots if non_roots and rng.random() < 0.85 else alive)
        self.apply("release", lambda f: f.release(node), lambda m: m.release(node))

    def op_invalid(self, rng):
        """One call with exactly one fault; both sides must raise the same type and change nothing."""
        m, alive, roots = self.m, self.alive(), self.roots()
        if not roots:
            return self.op_add_roots(rng)
        bad, n, r = self.bad_id(rng), rng.choice(alive), rng.choice(roots)
        non_roots = [x for x in alive if m.parent[x] != NO_PARENT]
        inner = [x for x in alive if m.kids[x]]
        terminal = [x for x in alive if m.terminal[x]]
        nan = float("nan")
        cases = [
            ("select bad root", lambda f: f.select([r, bad], 2, 1.0, 1.0, 0.0), lambda m: m.select([r, bad], 2, 1.0, 1.0, 0.0)),
            ("select k 0", lambda f: f.select([r], 0, 1.0, 1.0, 0.0), lambda m: m.select([r], 0, 1.0, 1.0, 0.0)),
            ("backup bad id", lambda f: f.backup([n, bad], [0.5, 0.5]), lambda m: m.backup([n, bad], [0.5, 0.5])),
            ("backup nan", lambda f: f.backup([n, n], [0.5, nan]), lambda m: m.backup([n, n], [0.5, nan])),
            ("backup discount", lambda f: f.backup([n], [0.5], 0.0), lambda m: m.backup([n], [0.5], 0.0)),
            ("cancel bad id", lambda f: f.cancel([n, bad]), lambda m: m.cancel([n, bad])),
            ("release bad id", lambda f: f.release(bad), lambda m: m.release(bad)),
            ("top_k duplicate", lambda f: f.top_k([n, n], 1, "value"), lambda m: m.top_k([n, n], 1, "value")),
            ("best_path bad root", lambda f: f.best_path(bad), lambda m: m.best_path(bad, "visits")),
            ("path_tokens bad id", lambda f: f.path_tokens(bad), lambda m: m.path_tokens(bad)),
            ("set_rewards nan", lambda f: f.set_rewards([n], [nan]), lambda m: m.set_rewards([n], [nan])),
            ("set_page_seqs bad", lambda f: f.set_page_seqs([n], [-5]), lambda m: m.set_page_seqs([n], [-5])),
        ]
        open_ = [x for x in alive if not m.terminal[x]]
        if open_:  # a parent that can take children, so the call has exactly one fault
            o = rng.choice(open_)
            cases.append(("children bad parent", lambda f: f.add_children([o, bad], [1, 1], [0.5, 0.5]),
                          lambda m: m.add_children([o, bad], [1, 1], [0.5, 0.5], [[], []])))
            cases.append(("children negative prior", lambda f: f.add_children([o], [2], [0.5, -1.0]),
                          lambda m: m.add_children([o], [2], [0.5, -1.0], [[], []])))
        if non_roots:
            x = rng.choice(non_roots)
            cases.append(("select non-root", lambda f: f.select([x], 1, 1.0, 1.0, 0.0), lambda m: m.select([x], 1, 1.0, 1.0, 0.0)))
            cases.append(("frontier non-root", lambda f: f.frontier([r, x]), lambda m: m.frontier([r, x])))
        if inner:
            y = rng.choice(inner)
            cases.append(("terminal inner", lambda f: f.set_terminal([y], [True]), lambda m: m.set_terminal([y], [True])))
        if terminal:
            z = rng.choice(terminal)
            cases.append(("terminal parent", lambda f: f.add_children([z], [1], [1.0]),
                          lambda m: m.add_children([z], [1], [1.0], [[]])))
        what, fcall, mcall = rng.choice(cases)
        assert not self.apply(what, fcall, mcall), f"{what} did not raise"

    OPS = ("add_roots", "add_children", "select", "backup", "cancel", "query", "set", "release", "invalid")
    WEIGHTS = (1, 6, 6, 5, 1, 2, 2, 2, 2)

    def step(self, op, rng, check=True):
        if self.m.num_alive > 120:  # keep trees small so every-step checks stay cheap
            op = "release"
        getattr(self, "op_" + op)(rng)
        if check:
            self.check(rng)

    # --- checks --------------------------------------------------------------------------------------
    def check(self, rng):
        e = self.f.export()
        want = self.m.export()
        for k in want:
            assert_equal(e[k], want[k], k)
        check_invariants(e, np.array(self.direct, np.int64))
        for n in self.pick(rng, self.alive(), 0, 2):  # path tokens extend the parent's path tokens
            p = int(e["parent"][n])
            own = self.f.node_tokens(n).tolist()
            assert self.f.path_tokens(n).tolist() == (self.f.path_tokens(p).tolist() if p != NO_PARENT else []) + own


def subtree_sums(values, parent, depth, mask):
    """values[n] summed over the subtree of n, counting only nodes where mask is set (children first)."""
    acc = np.where(mask, values, 0).astype(np.int64)
    idx = np.flatnonzero(mask & (parent != NO_PARENT))
    idx = idx[np.argsort(-depth[idx], kind="stable")]  # deepest level first
    d = depth[idx]
    cuts = np.flatnonzero(d[1:] != d[:-1]) + 1
    for level in np.split(idx, cuts):
        acc += np.bincount(parent[level], weights=acc[level], minlength=acc.size).astype(np.int64)
    return acc


def check_invariants(e, direct):
    parent, alive, depth, tree = e["parent"], e["alive"], e["depth"], e["tree"]
    n = parent.size
    # visits = number of backups that passed through the node (released descendants included)
    assert_equal(e["visits"], subtree_sums(direct, parent, depth, np.ones(n, bool)), "visits")
    # virtual loss = pending live nodes at or below the node
    assert not (e["pending"] & ~alive).any(), "a released node is pending"
    vl = subtree_sums(e["pending"].astype(np.int64), parent, depth, alive)
    assert_equal(e["virtual_loss"][alive], vl[alive], "virtual_loss")
    # parent pointers, depth and tree ids agree; live nodes hang under live parents
    live = np.flatnonzero(alive)
    roots = live[parent[live] == NO_PARENT]
    kids = live[parent[live] != NO_PARENT]
    assert alive[parent[kids]].all(), "a live node has a released parent"
    assert (depth[kids] == depth[parent[kids]] + 1).all() and (depth[roots] == 0).all(), "depth"
    assert (tree[kids] == tree[parent[kids]]).all() and (tree[roots] == roots).all(), "tree"
    # child lists: first_child -> next_sibling ... must list exactly the live children in creation
    # (id) order, so every live node is reachable from its root and no released node is
    ks = kids[np.argsort(parent[kids], kind="stable")]  # grouped by parent, ids ascending within
    ps = parent[ks]
    same = ps[1:] == ps[:-1]
    want_next = np.full(n, NO_NODE)
    want_next[ks[:-1][same]] = ks[1:][same]
    want_first, want_last = np.full(n, NO_NODE), np.full(n, NO_NODE)
    if ks.size:
        starts, ends = np.r_[True, ~same], np.r_[~same, True]
        want_first[ps[starts]], want_last[ps[ends]] = ks[starts], ks[ends]
    assert_equal(e["first_child"][live], want_first[live], "first_child")
    assert_equal(e["next_sibling"][kids], want_next[kids], "next_sibling")
    assert_equal(e["last_child"][live], want_last[live], "last_child")
    assert_equal(e["num_children"][live], np.bincount(ps, minlength=n)[live], "num_children")
    assert not (e["terminal"][live] & (e["num_children"][live] > 0)).any(), "a terminal node has children"


def assert_equal(got, want, what):
    if not np.array_equal(got, want):  # the slow, descriptive comparison only on failure
        np.testing.assert_array_equal(got, want, err_msg=what)


class ForestMachine(RuleBasedStateMachine):
    ops = 0

    @initialize(num_roots=st.integers(1, 3))
    def start(self, num_roots):
        self.h = Harness()
        for _ in range(num_roots):
            self.h.op_add_roots(random.Random(num_roots))

    @rule(op=st.sampled_from(Harness.OPS), seed=st.integers(0, 2**32 - 1))
    def step(self, op, seed):
        self.h.step(op, random.Random(seed), check=False)  # the invariant below checks every step

    def teardown(self):
        if hasattr(self, "h"):
            ForestMachine.ops += self.h.ops

    @invariant()
    def arrays_match(self):
        if hasattr(self, "h"):
            self.h.check(random.Random(0))


def test_state_machine_matches_model():
    ForestMachine.ops = 0
    run_state_machine_as_test(ForestMachine, settings=settings(max_examples=150, stateful_step_count=60, deadline=None))
    assert ForestMachine.ops >= STATE_MACHINE_OPS, ForestMachine.ops


def test_random_programs_match_model():
    total = [0]

    @settings(max_examples=PROGRAM_EXAMPLES, deadline=None)
    @given(seed=st.integers(0, 2**63 - 1), weights=st.permutations(Harness.WEIGHTS))
    def program(seed, weights):
        rng = random.Random(seed)
        h = Harness()
        h.op_add_roots(rng)
        ops = rng.choices(Harness.OPS, weights=weights if rng.random() < 0.3 else Harness.WEIGHTS, k=PROGRAM_STEPS)
        for op in ops:
            h.step(op, rng)
        total[0] += h.ops

    program()
    assert total[0] >= PROGRAM_OPS, total[0]


@pytest.mark.parametrize("seed", [1, 2])
def test_invariant_checker_catches_corruption(seed):
    """The invariant checker itself must fail on a corrupted export (guards against a vacuous check)."""
    h = Harness()
    rng = random.Random(seed)
    h.op_add_roots(rng)
    for op in ["select", "add_children", "backup", "select", "add_children", "select"]:
        h.step(op, rng)
    e = h.f.export()
    check_invariants(e, np.array(h.direct, np.int64))
    for field, node in [("visits", 0), ("virtual_loss", 0), ("num_children", 0)]:
        bad = {k: v.copy() for k, v in e.items()}
        bad[field][node] += 1
        with pytest.raises(AssertionError):
            check_invariants(bad, np.array(h.direct, np.int64))
