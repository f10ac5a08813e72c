"""Small matrices on 1-15 rows: ``linear_blocked_cpu`` (the BLAS's summation order, no padding)
against padding the rows to 16 for ``F.linear``, side by side in one process.

Runs ``ponder solve 22 13 20 21 --target 36 --all-numbers``'s search and, with ``--demo``, the
demo's nine searches, each with ``ops.linear.BLOCKED_MAX_ROWS`` at 0 (every product of fewer
than 16 rows padded, as before the kernel) and at its default. Both must give the same results
(each answer, token count and score; the benchmark exits with an error otherwise), since the
kernel reproduces the BLAS's bits. The two runs alternate in order from repeat to repeat; the
best wall time of each is kept, with its CPU time.

    python benchmarks/bench_small_rows.py [--demo] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import ponder  # (first, before torch loads: passive OpenMP waiting, MKL_CBWR; see ponder/__init__.py)
import torch

from ponder.ops import linear
from ponder.tasks import countdown, demo


def _signature(out):
    return [(r.answer, r.stats["tokens_generated"], r.score) for r in out["results"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", action="store_true", help="also the demo's nine searches (40 problems)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (solve and the demo run on 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = demo.load_model()
    jobs = [("solve 22 13 20 21 -> 36", [countdown.Problem((22, 13, 20, 21), 36, True)], demo.mcts_strategy(64))]
    if args.demo:
        problems = demo.held_out_problems(40, 4, False)
        jobs += [(f"demo {s.name} {s.label}", problems, s) for s in demo.strategies()]
    default = linear.BLOCKED_MAX_ROWS
    print(f"torch threads {torch.get_num_threads()}, best of {args.repeats}; padded = every product of "
          f"1-15 rows padded to 16, kernel = BLOCKED_MAX_ROWS {default}")
    print(f"{'search':<30} {'padded wall/CPU s':>18} {'kernel wall/CPU s':>18} {'wall ratio':>10}")
    totals = {0: [0.0, 0.0], default: [0.0, 0.0]}
    try:
        for name, problems, strategy in jobs:
            best, sigs = {}, {}
            for rep in range(args.repeats):
                for limit in ((0, default) if rep % 2 == 0 else (default, 0)):
                    linear.BLOCKED_MAX_ROWS = limit
                    t0, c0 = time.perf_counter(), time.process_time()
                    out = demo.run_strategy(model, tok, problems, strategy, progress=False)
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                    if limit not in best or wall < best[limit][0]:
                        best[limit] = (wall, cpu)
                    sigs[limit] = _signature(out)
            if sigs[0] != sigs[default]:
                raise SystemExit(f"{name}: the kernel changed the results")
            for k in best:
                totals[k][0] += best[k][0]
                totals[k][1] += best[k][1]
            (w0, c0), (w1, c1) = best[0], best[default]
            print(f"{name:<30} {w0:8.2f} / {c0:7.2f} {w1:8.2f} / {c1:7.2f} {w0 / w1:9.2f}x")
    finally:
        linear.BLOCKED_MAX_ROWS = default
    (w0, c0), (w1, c1) = totals[0], totals[default]
    print(f"{'total':<30} {w0:8.2f} / {c0:7.2f} {w1:8.2f} / {c1:7.2f} {w0 / w1:9.2f}x")


if __name__ == "__main__":
    main()
