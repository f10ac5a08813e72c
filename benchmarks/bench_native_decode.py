"""The native decode step on and off: the demo's searches with ``DecoderLM.native_decode`` True
(the default: a decode batch without a plan runs as one ``_core.DecoderCpu`` call) against
False (the eager layer loop), side by side in one process.

Both give the same bits, so both runs must give the same trees; the benchmark checks every
problem's answer, token count and score, and reports per strategy the wall and CPU time of
each run and their ratio (best of ``--repeats``, alternating which runs first).

    python benchmarks/bench_native_decode.py [--problems 40] [--only mcts] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse

import ponder  # (first, before torch loads: passive OpenMP waiting, MKL_CBWR; see ponder/__init__.py)
import torch

from bench_dedup import ab_table
from ponder.models import native_decoder
from ponder.tasks import demo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", type=int, default=40, help="held-out 4-number problems (the demo's 40)")
    ap.add_argument("--only", default=None, help="run only strategies whose name contains this (e.g. mcts)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the demo runs on 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = demo.load_model()
    if native_decoder.for_model(model) is None:
        raise SystemExit("the native decode step is not available for this model on this build")
    problems = demo.held_out_problems(args.problems, 4, False)
    print(f"{args.problems} problems, torch threads {torch.get_num_threads()}, best of {args.repeats}")
    strategies = [(s, args.repeats) for s in demo.strategies() if not args.only or args.only in s.name]

    def run(s, on):
        model.native_decode = on
        return demo.run_strategy(model, tok, problems, s)

    ab_table(problems, strategies, run, "the native decode step", shared_column=False)


if __name__ == "__main__":
    main()
