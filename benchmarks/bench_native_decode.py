"""The native decode step on and off: the demo's searches with ``DecoderLM.native_decode`` True
(the default: a decode batch without a plan runs as one ``_core.DecoderCpu`` call) against
False (the eager layer loop), side by side in one process.

Both give the same bits, so both runs must give the same trees; the benchmark checks every
problem's answer, token count and score, and reports per strategy the wall and CPU time of
each run and their ratio (best of ``--repeats``, alternating which runs first).

    python benchmarks/bench_native_decode.py [--problems 40] [--only mcts] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import ponder  # noqa: F401  (first, before torch loads: passive OpenMP waiting, MKL_CBWR; see ponder/__init__.py)

from bench_dedup import ab_table, demo_setup
from ponder.models import native_decoder
from ponder.tasks import demo


def main() -> None:
    model, tok, problems, strategies = demo_setup(__doc__)
    if native_decoder.for_model(model) is None:
        raise SystemExit("the native decode step is not available for this model on this build")

    def run(s, on):
        model.native_decode = on
        return demo.run_strategy(model, tok, problems, s)

    ab_table(strategies, run, "the native decode step", shared_column=False)


if __name__ == "__main__":
    main()
