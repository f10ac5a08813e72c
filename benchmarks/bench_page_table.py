"""PageTable throughput on a search-shaped workload: ponder's native table vs plain Python.

One round: allocate R prompts (a shared system prefix plus a distinct question), fork each F
ways, free the prompts, decode T tokens into every branch with one batched append per step
(tokens recorded, so full pages join the prefix cache), then free the branches. Operations are
counted per sequence: R allocates + R*F forks + R frees + T*R*F appends + R*F frees. Each
configuration runs twice: forks and frees one call per sequence, then batched (fork_many /
free_many; the Python baseline loops inside the same methods). Appends are batched in both.

    python benchmarks/bench_page_table.py [--quick]
    pytest benchmarks/bench_page_table.py --benchmark-only
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from py_page_table import PyPageTable  # noqa: E402

from ponder.page_table import PageTable  # noqa: E402


class Workload:
    def __init__(self, roots=64, prompt=512, shared=256, fanout=8, steps=64, page_size=16, seed=0):
        rng = np.random.default_rng(seed)
        system = rng.integers(0, 32000, size=shared)
        self.prompts = [np.concatenate([system, rng.integers(0, 32000, size=prompt - shared)]).astype(np.int32)
                        for _ in range(roots)]
        self.step_tokens = [rng.integers(0, 32000, size=roots * fanout).astype(np.int32) for _ in range(steps)]
        self.roots, self.prompt, self.fanout, self.steps, self.page_size = roots, prompt, fanout, steps, page_size
        branches = roots * fanout
        self.num_pages = roots * -(-prompt // page_size) + branches * (-(-steps // page_size) + 1)
        self.ops = roots * (2 + fanout) + branches * (steps + 1)
        self.ones = np.ones(branches, dtype=np.int32)
        # Plain-Python inputs, converted once so the baseline is not charged for numpy conversions.
        self.prompts_list = [p.tolist() for p in self.prompts]
        self.step_tokens_list = [t.tolist() for t in self.step_tokens]
        self.ones_list = self.ones.tolist()

    def describe(self):
        return (f"{self.roots} prompts x {self.prompt} tok, fork {self.fanout}, {self.steps} decode steps, "
                f"S={self.page_size}")


def run_ponder(w: Workload, record=None, batched=False):
    pt = PageTable(w.num_pages, w.page_size)
    roots = [pt.allocate(p) for p in w.prompts]
    root_ids = np.array([r[0] for r in roots], dtype=np.int32)
    if batched:
        branches = pt.fork_many(np.repeat(root_ids, w.fanout))
        pt.free_many(root_ids)
    else:
        branches = np.array([pt.fork(r) for r in root_ids.tolist() for _ in range(w.fanout)], dtype=np.int32)
        for r in root_ids.tolist():
            pt.free(r)
    for tokens in w.step_tokens:
        out = pt.append(branches, w.ones, tokens)
        if record is not None:
            record.append(out)
    if batched:
        pt.free_many(branches)
    else:
        for b in branches.tolist():
            pt.free(b)
    if record is not None:
        record.insert(0, roots)
    return pt


def run_python(w: Workload, record=None, batched=False):
    pt = PyPageTable(w.num_pages, w.page_size)
    roots = [pt.allocate(p) for p in w.prompts_list]
    root_ids = [r[0] for r in roots]
    if batched:
        branches = pt.fork_many([r for r in root_ids for _ in range(w.fanout)])
        pt.free_many(root_ids)
    else:
        branches = [pt.fork(r) for r in root_ids for _ in range(w.fanout)]
        for r in root_ids:
            pt.free(r)
    for tokens in w.step_tokens_list:
        out = pt.append(branches, w.ones_list, tokens)
        if record is not None:
            record.append(out)
    if batched:
        pt.free_many(branches)
    else:
        for b in branches:
            pt.free(b)
    if record is not None:
        record.insert(0, roots)
    return pt


def check_same(w: Workload):
    """Both implementations, per-call and batched, must return identical allocations, slot
    mappings and copy lists."""
    runs = []
    for fn in (run_ponder, run_python):
        for batched in (False, True):
            record = []
            pt = fn(w, record, batched)
            roots = [(s, c, np.asarray(slots).tolist()) for s, c, slots in record[0]]
            steps = [[np.asarray(a).tolist() for a in out] for out in record[1:]]
            st = pt.stats()
            runs.append((roots, steps, {k: st[k] for k in ("free", "used", "evictable", "cached", "num_seqs")}))
    assert all(r == runs[0] for r in runs[1:])
    assert run_ponder(w).stats()["prefix_hits"] > 0  # the shared system prefix was reused


def _time(fn, w, repeats, min_seconds):
    """Median and best CPU time of this process over at least `repeats` runs (and `min_seconds`).
    CPU time rather than wall time: on a shared machine a long run is descheduled more often than
    a short one, which would flatter the faster implementation; single-threaded, the two agree
    on an idle machine."""
    times = []
    while len(times) < repeats or sum(times) < min_seconds:
        t0 = time.process_time()
        fn(w)
        times.append(time.process_time() - t0)
    return statistics.median(times), min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (CI)")
    args = parser.parse_args(argv)
    if args.quick:
        configs, repeats, min_seconds = [dict(roots=16, steps=16), dict(roots=16, steps=16, prompt=500)], 3, 0.2
    else:
        configs, repeats, min_seconds = [dict(), dict(prompt=500), dict(fanout=16, steps=128)], 7, 1.0
    for cfg in configs:
        w = Workload(**cfg)
        check_same(w)
        for batched in (False, True):
            (t_ours, best_ours), (t_py, best_py) = (
                _time(lambda w_: f(w_, batched=batched), w, repeats, min_seconds) for f in (run_ponder, run_python))
            how = "fork_many/free_many" if batched else "fork/free per sequence"
            print(f"page_table {w.describe()}, {how}: ponder {w.ops / t_ours:,.0f} ops/s ({t_ours * 1e3:.2f} ms, "
                  f"best {best_ours * 1e3:.2f}), python {w.ops / t_py:,.0f} ops/s ({t_py * 1e3:.1f} ms, "
                  f"best {best_py * 1e3:.1f}), ratio {t_py / t_ours:.1f}x on medians, {best_py / best_ours:.1f}x on bests "
                  f"(CPU time per round)")


QUICK = dict(roots=16, steps=16)


def test_page_table_ponder(benchmark):
    w = Workload(**QUICK)
    check_same(w)
    benchmark(run_ponder, w)


def test_page_table_ponder_batched(benchmark):
    w = Workload(**QUICK)
    check_same(w)
    benchmark(run_ponder, w, batched=True)


def test_page_table_python(benchmark):
    w = Workload(**QUICK)
    check_same(w)
    benchmark(run_python, w)


if __name__ == "__main__":
    main()
