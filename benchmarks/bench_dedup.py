"""Shared sibling rows on and off: the demo's searches with ``Engine(dedup_rows=True)`` (the
default) against ``dedup_rows=False``, side by side in one process.

With ``dedup_rows`` a decode step runs the model once per group of siblings that have drawn the
same tokens so far (same KV, same hidden state); every row still writes its own KV and samples
with its own key, so both runs must give the same trees. The benchmark checks that (every
problem's answer, token count and score) and reports, per strategy: wall and CPU time of each
run, their ratio, and the share of decode rows a group's first row ran for. The two runs of a
strategy alternate in order from repeat to repeat; the best time of each is kept.

    python benchmarks/bench_dedup.py [--problems 40] [--only mcts] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import ponder  # (first, before torch loads: passive OpenMP waiting, MKL_CBWR; see ponder/__init__.py)
import torch

from ponder.tasks import demo


def _signature(out):
    """What must not change: each problem's answer, token count and score."""
    return [(r.answer, r.stats["tokens_generated"], r.score) for r in out["results"]]


def ab_table(strategies, run, what: str, shared_column: bool = True) -> None:
    """Run each strategy with a switch off and on (``run(strategy, on) -> demo output``),
    alternating the order from repeat to repeat; print wall / CPU time of the best of each and
    their ratio, and exit with an error if any answer, token count or score differs.
    ``shared_column``: also print the share of decode rows a group's first row ran for."""
    head = f"{'strategy':<26} {'rows shared':>11} " if shared_column else f"{'strategy':<26} "
    print(head + f"{'off wall/CPU s':>15} {'on wall/CPU s':>15} {'wall ratio':>10}")
    totals = {False: [0.0, 0.0], True: [0.0, 0.0]}
    for s, repeats in strategies:
        best = {False: (float("inf"), 0.0), True: (float("inf"), 0.0)}
        sigs, stats = {}, {}
        for rep in range(repeats):
            for on in ((False, True) if rep % 2 == 0 else (True, False)):
                t0, c0 = time.perf_counter(), time.process_time()
                out = run(s, on)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                if wall < best[on][0]:
                    best[on] = (wall, cpu)
                sigs[on], stats[on] = _signature(out), out["engine_stats"]
        if sigs[False] != sigs[True]:
            raise SystemExit(f"{s.name} {s.label}: {what} changed the results")
        (w0, c0), (w1, c1) = best[False], best[True]
        for k, (w, c) in best.items():
            totals[k][0] += w
            totals[k][1] += c
        row = f"{s.name + ' ' + s.label:<26} "
        if shared_column:
            row += f"{stats[True]['decode_rows_shared'] / max(1, stats[True]['tokens_decoded']):>10.1%} "
        print(row + f"{w0:>7.2f}/{c0:<7.2f} {w1:>7.2f}/{c1:<7.2f} {w0 / w1:>9.2f}x", flush=True)
    (w0, c0), (w1, c1) = totals[False], totals[True]
    pad = f"{'all':<26} {'':>11} " if shared_column else f"{'all':<26} "
    print(pad + f"{w0:>7.2f}/{c0:<7.2f} {w1:>7.2f}/{c1:<7.2f} {w0 / w1:>9.2f}x")
    print(f"same answers, token counts and scores with and without {what}")


def demo_setup(doc: str):
    """The options both A/B scripts take; returns (model, tokenizer, problems, [(strategy,
    repeats)]) after setting the thread count and printing the run's header."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--problems", type=int, default=40, help="held-out 4-number problems (the demo's 40)")
    ap.add_argument("--only", default=None, help="run only strategies whose name contains this (e.g. mcts)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the demo runs on 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = demo.load_model()
    problems = demo.held_out_problems(args.problems, 4, False)
    print(f"{args.problems} problems, torch threads {torch.get_num_threads()}, best of {args.repeats}")
    return model, tok, problems, [(s, args.repeats) for s in demo.strategies() if not args.only or args.only in s.name]


def main() -> None:
    model, tok, problems, strategies = demo_setup(__doc__)
    ab_table(strategies,
             lambda s, on: demo.run_strategy(model, tok, problems, s, engine_options=dict(dedup_rows=on)),
             "dedup_rows")


if __name__ == "__main__":
    main()
