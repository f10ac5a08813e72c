"""Forest tree-op throughput: ponder's native Forest vs a plain-Python tree (benchmarks/py_forest.py).

Workload (one synthetic MCTS, the same for both): T trees, S simulations per tree, every selected
leaf expanded with B children. Each round calls select on every tree that still needs
simulations with up to K leaves per tree (virtual loss spreads them; a tree stops early when
its next descent would repeat a pending leaf), expands and backs up the first
min(found, still needed) leaves per tree and cancels the rest, until every tree has exactly S
simulations. Priors and values come from a splitmix64 hash of (tree, node, child) computed with
numpy, identically for both, and are excluded from the timed tree-op time (select +
add_children + backup + cancel). Default: T=256, S=200, B=8, K=8 (about 27 rounds: one root
expansion, then 8 leaves per tree per round). Both runs must build identical trees (parents,
visit counts, value sums) before any number is printed.

    python benchmarks/bench_forest.py [--quick]          # script: wall and CPU lines, ratio
    pytest benchmarks/bench_forest.py --benchmark-only   # pytest-benchmark: whole quick search

Measure an optimised extension: ``pip install .`` builds Release; a plain CMake dev build needs
-DCMAKE_BUILD_TYPE=Release (without it the C++ runs unoptimised, about 5x slower).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from py_forest import PyForest  # noqa: E402

from ponder.forest import NO_NODE, Forest  # noqa: E402

C_PUCT, VIRTUAL_LOSS, FPU = 1.25, 1.0, 0.0


@dataclass(frozen=True)
class Workload:
    num_trees: int = 256
    num_simulations: int = 200
    branching: int = 8
    leaves_per_round: int = 8


FULL, QUICK = Workload(), Workload(num_trees=64, num_simulations=50)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniform_hash(tree: np.ndarray, node: np.ndarray, salt: np.ndarray) -> np.ndarray:
    """float64 in [0, 1), a deterministic function of (tree, node, salt)."""
    key = (tree.astype(np.uint64) << np.uint64(32)) | node.astype(np.uint64)
    h = _splitmix64(_splitmix64(key) ^ salt.astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def model(trees: np.ndarray, leaves: np.ndarray, branching: int):
    """priors float32[L * B] (each leaf's B priors sum to 1) and values float32[L] in [-1, 1)."""
    child = np.arange(1, branching + 1, dtype=np.uint64)
    u = uniform_hash(trees[:, None], leaves[:, None], child[None, :]) + 0.01
    priors = (u / u.sum(axis=1, keepdims=True)).astype(np.float32).ravel()
    values = (2.0 * uniform_hash(trees, leaves, np.zeros_like(leaves)) - 1.0).astype(np.float32)
    return priors, values


class _Ponder:
    def __init__(self, num_trees, capacity=1024):
        self.f = Forest(capacity=capacity)
        self.roots = self.f.add_roots([], np.zeros(num_trees + 1, np.int64))

    def select(self, active, k):
        return self.f.select(self.roots[active], k, C_PUCT, VIRTUAL_LOSS, FPU)

    def prepare(self, arr):
        return arr

    def expand_backup(self, leaves, counts, priors, values, drop):
        self.f.add_children(leaves, counts, priors)
        self.f.backup(leaves, values)
        self.f.cancel(drop)


class _Python:
    def __init__(self, num_trees, capacity=None):
        self.f = PyForest()
        self.roots = self.f.add_roots(num_trees)

    def select(self, active, k):
        return self.f.select([self.roots[i] for i in active], k, C_PUCT, VIRTUAL_LOSS, FPU)

    def prepare(self, arr):
        return arr.tolist()

    def expand_backup(self, leaves, counts, priors, values, drop):
        self.f.add_children(leaves, counts, priors)
        self.f.backup(leaves, values)
        self.f.cancel(drop)


def search(impl_cls, w: Workload, clock=time.perf_counter):
    """Runs the workload; returns (impl, tree-op seconds by ``clock``, simulations, rounds)."""
    # The search knows its budget, so it sizes the forest once (node arrays then never move).
    impl = impl_cls(w.num_trees, w.num_trees * (w.num_simulations * w.branching + 1))
    done = np.zeros(w.num_trees, np.int64)
    op_time, rounds = 0.0, 0
    while (need := w.num_simulations - done).any():
        active = np.flatnonzero(need > 0)
        arg = impl.prepare(active)
        t0 = clock()
        picked = impl.select(arg, w.leaves_per_round)
        op_time += clock() - t0
        picked = np.asarray(picked, np.int32)  # [A, K], NO_NODE padded
        found = picked != NO_NODE
        take = found & (np.cumsum(found, axis=1) <= need[active][:, None])
        leaves, drop = picked[take], picked[found & ~take]
        trees = np.broadcast_to(active[:, None], picked.shape)[take]
        priors, values = model(trees, leaves, w.branching)
        counts = np.full(leaves.size, w.branching, np.int32)
        args = [impl.prepare(a) for a in (leaves, counts, priors, values, drop)]
        t0 = clock()
        impl.expand_backup(*args)
        op_time += clock() - t0
        done[active] += take.sum(axis=1)
        rounds += 1
    return impl, op_time, int(done.sum()), rounds


def assert_identical(ponder_impl: _Ponder, python_impl: _Python) -> int:
    f, p = ponder_impl.f, python_impl.f
    assert f.num_nodes == len(p.nodes), (f.num_nodes, len(p.nodes))
    assert f.parent.tolist() == p.parents(), "parents differ"
    assert f.visits.tolist() == p.visits(), "visit counts differ"
    assert f.value_sum.tolist() == p.value_sums(), "value sums differ"
    assert not f.virtual_loss.any() and not f.pending.any()
    return f.num_nodes


def best_of(repeats: int, impl_cls, w: Workload, clock):
    runs = [search(impl_cls, w, clock) for _ in range(repeats)]
    return min(runs, key=lambda r: r[1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64 trees x 50 simulations instead of 256 x 200")
    args = ap.parse_args(argv)
    w = QUICK if args.quick else FULL
    ours, base = search(_Ponder, w), search(_Python, w)
    nodes = assert_identical(ours[0], base[0])
    assert ours[2] == base[2] == w.num_trees * w.num_simulations
    sims = ours[2]
    print(f"forest: {w.num_trees} trees x {w.num_simulations} simulations, branching {w.branching}, "
          f"<= {w.leaves_per_round} leaves/tree/select, {ours[3]} rounds, {nodes} nodes; trees identical "
          f"(parents, visits, value sums)")
    # Wall time is what a user sees; CPU time of this thread (the C++ calls run in it) is robust to
    # other load on a shared machine. Best of 5 (ponder) / 2 (python) runs each.
    for label, clock in (("wall", time.perf_counter), ("cpu ", time.thread_time)):
        t_ours, t_base = best_of(5, _Ponder, w, clock)[1], best_of(2, _Python, w, clock)[1]
        print(f"  {label}  ponder {t_ours * 1e3:8.1f} ms {sims / t_ours:11,.0f} sim/s   "
              f"python {t_base * 1e3:8.1f} ms {sims / t_base:9,.0f} sim/s   ratio {t_base / t_ours:5.1f}x")


# --- pytest-benchmark --------------------------------------------------------------------------------
def test_forest_ponder(benchmark):
    assert_identical(search(_Ponder, QUICK)[0], search(_Python, QUICK)[0])
    _, _, sims, _ = benchmark(search, _Ponder, QUICK)
    assert sims == QUICK.num_trees * QUICK.num_simulations


def test_forest_python(benchmark):
    _, _, sims, _ = benchmark.pedantic(search, args=(_Python, QUICK), rounds=3)
    assert sims == QUICK.num_trees * QUICK.num_simulations


if __name__ == "__main__":
    main()
