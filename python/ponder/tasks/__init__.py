"""Built-in tasks with exact verifiers; Countdown and its bundled tiny model.

* :mod:`ponder.tasks.countdown`: rules, prompt format, step parsing, checker, solver, generator.
* :mod:`ponder.tasks.tokenizer`: the character tokenizer of the bundled model.
* :mod:`ponder.tasks.traces`: training examples (policy traces, value-labelled states).
* :mod:`ponder.tasks.train`: the training loop (``train_countdown``) and ``load_countdown``.
* :mod:`ponder.tasks.evaluation`: greedy solve rate and value accuracy without the search layer.

Only the torch-free parts are imported here; ``train`` / ``evaluation`` load on demand.
"""

from ponder.tasks.countdown import (
    CheckResult,
    Problem,
    Step,
    all_solutions,
    answer_expression,
    check,
    generate,
    is_solvable,
    is_solved,
    is_terminal,
    parse_step,
    remaining,
    solutions,
    solve,
)
from ponder.tasks.tokenizer import CharTokenizer

__all__ = [
    "CharTokenizer",
    "CheckResult",
    "Problem",
    "Step",
    "all_solutions",
    "answer_expression",
    "check",
    "generate",
    "is_solvable",
    "is_solved",
    "is_terminal",
    "parse_step",
    "remaining",
    "solutions",
    "solve",
]
