"""Countdown: reach a target from a multiset of numbers with + - * /, one step per line.

Rules (both variants):

* A step is one line ``"a op b = c"`` with ``op`` one of ``+ - * /``. Its operands must be
  available: each given number, and each result of an earlier step, can be used once.
* Every result is a positive integer: no negative results, no fractions (``a / b`` only when
  ``b`` divides ``a``) and no zero (``a - a`` is refused: a zero only ever serves to discard
  numbers, which would make the all-numbers rule trivial, and classic Countdown forbids it).
* ``all_numbers=False`` (classic, rule ``any``): any subset of the numbers may be used; the
  problem is solved by the first line whose result is the target, and nothing may follow it.
  The target may not be one of the numbers (that problem would be solved with no step).
* ``all_numbers=True`` (the 24 game, rule ``all``): every number is used exactly once; solved
  when the last line leaves exactly one number and it is the target.

Prompt format: the numbers, ``->``, the target and the rule (one model serves both rules, so
the rule is in the prompt), then a newline::

    3 7 25 50 -> 175 any
    25 * 7 = 175

The prompt is kept this short on purpose: the bundled model is trained on a CPU, and a
spelled-out prompt (``numbers: .. | target: .. | rule: ..``) would be over half of every
training sequence while carrying no supervision.

The model writes step lines after the prompt line and ends with EOS after the solving line.
Traces write operands larger-first (``7 + 3``, never ``3 + 7``) so one state has one spelling;
the checker accepts either order. ``answer_expression`` turns the steps into one fully
parenthesised expression (``"((25 - 5) * (3 + 7))"``), and an ``answer: (...)`` line after
the steps is accepted and re-checked by evaluating it.

The exhaustive search itself lives in :mod:`ponder.tasks.solver` (plain multisets); the
functions here wrap it with :class:`Problem` and return step lines.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections import Counter
from typing import List, Optional, Sequence, Tuple, Union

from ponder.tasks import solver as _solver
from ponder.tasks.expression import build_expression, evaluate_expression

OPS = ("+", "-", "*", "/")
MAX_NUMBERS = 8
RULE_NAMES = {False: "any", True: "all"}
ANSWER_PREFIX = "answer:"

_STEP_RE = re.compile(r"^\s*(\d+)\s*([-+*/])\s*(\d+)\s*=\s*(\d+)\s*$")
_PROMPT_RE = re.compile(r"^(\d+(?: \d+)*) -> (\d+) (any|all)$")


def is_int(value) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Problem:
    """A Countdown instance: ``numbers`` (a multiset, kept in the given order), ``target``."""

    numbers: Tuple[int, ...]
    target: int
    all_numbers: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.numbers, (tuple, list)):
            raise TypeError(f"numbers must be a tuple of ints, got {type(self.numbers).__name__}")
        object.__setattr__(self, "numbers", tuple(self.numbers))
        if not 2 <= len(self.numbers) <= MAX_NUMBERS:
            raise ValueError(f"numbers must hold 2 to {MAX_NUMBERS} values, got {len(self.numbers)}: {self.numbers}")
        for x in self.numbers:
            if not is_int(x) or x < 1:
                raise ValueError(f"numbers must be positive ints, got {x!r} in {self.numbers}")
        if not is_int(self.target) or self.target < 1:
            raise ValueError(f"target must be a positive int, got {self.target!r}")
        if not isinstance(self.all_numbers, bool):
            raise TypeError(f"all_numbers must be a bool, got {self.all_numbers!r}")
        if not self.all_numbers and self.target in self.numbers:
            raise ValueError(f"target {self.target} is one of the numbers {self.numbers}: under the classic "
                             "rule that problem needs no step")

    @property
    def rule(self) -> str:
        return RULE_NAMES[self.all_numbers]

    def prompt(self) -> str:
        """The prompt line the model is conditioned on, newline included."""
        nums = " ".join(str(x) for x in self.numbers)
        return f"{nums} -> {self.target} {self.rule}\n"

    @classmethod
    def from_prompt(cls, text: str) -> "Problem":
        """Parse the first line of ``text`` as a prompt written by :meth:`prompt`."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        line = text.split("\n", 1)[0]
        m = _PROMPT_RE.match(line)
        if m is None:
            raise ValueError(f"text does not start with a prompt 'A B .. -> T any|all', "
                             f"got {line!r}")
        return cls(tuple(int(x) for x in m.group(1).split()), int(m.group(2)), m.group(3) == "all")

    def key(self) -> Tuple[Tuple[int, ...], int, bool]:
        """Identity up to the order of the numbers (for de-duplication and held-out sets)."""
        return tuple(sorted(self.numbers)), self.target, self.all_numbers


@dataclasses.dataclass(frozen=True)
class Step:
    """One parsed line ``a op b = result`` (the stated result, not necessarily correct)."""

    a: int
    op: str
    b: int
    result: int

    def __str__(self) -> str:
        return f"{self.a} {self.op} {self.b} = {self.result}"


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """Verdict of :func:`check`. ``reason`` is ``"solved"`` when ok, otherwise what is wrong."""

    ok: bool
    reason: str
    steps: Tuple[Step, ...]
    answer_expr: Optional[str]


def apply_op(a: int, op: str, b: int) -> Optional[int]:
    """``a op b`` when it is a legal Countdown result (a positive integer), else None."""
    if op == "+":
        return a + b
    if op == "*":
        return a * b
    if op == "-":
        return a - b if a > b else None
    if op == "/":
        return a // b if b > 0 and a % b == 0 else None
    raise ValueError(f"op must be one of {OPS}, got {op!r}")


def _illegal_reason(a: int, op: str, b: int) -> str:
    if op == "-":
        return f"{a} - {b} is {'zero' if a == b else 'negative'}, results must be positive"
    return f"{a} / {b} is not an integer"


def parse_step(line: str) -> Step:
    """Parse ``"a op b = c"`` (spaces optional, non-negative integers without leading zeros).

    Only the form is checked here; whether the arithmetic is right and the operands are
    available is :func:`remaining`'s and :func:`check`'s business. Raises ``ValueError``.
    """
    if not isinstance(line, str):
        raise TypeError(f"line must be a str, got {type(line).__name__}")
    m = _STEP_RE.match(line)
    if m is None:
        raise ValueError(f"malformed step {line!r}: expected 'a op b = c' with op one of + - * /")
    for tok in (m.group(1), m.group(3), m.group(4)):
        if len(tok) > 1 and tok[0] == "0":
            raise ValueError(f"malformed step {line!r}: number {tok!r} has a leading zero")
    return Step(int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4)))


def _as_step(step: Union[str, Step]) -> Step:
    if isinstance(step, Step):
        return step
    if isinstance(step, str):
        return parse_step(step)
    raise TypeError(f"a step must be a str line or a Step, got {type(step).__name__}")


def _apply_step(pool: Counter, step: Step) -> None:
    """Check ``step`` against the available multiset ``pool`` and apply it (ValueError if illegal)."""
    value = apply_op(step.a, step.op, step.b)
    if value is None:
        raise ValueError(f"step '{step}': {_illegal_reason(step.a, step.op, step.b)}")
    if value != step.result:
        raise ValueError(f"step '{step}': wrong arithmetic, {step.a} {step.op} {step.b} is {value}")
    need = Counter((step.a, step.b))
    for x, count in need.items():
        if pool[x] < count:
            have = " ".join(str(v) for v in sorted(pool.elements()))
            raise ValueError(f"step '{step}': {x} is not available{' twice' if count > 1 else ''} "
                             f"(available: {have})")
    pool.subtract(need)
    pool[value] += 1


def remaining(problem: Problem, steps: Sequence[Union[str, Step]]) -> Tuple[int, ...]:
    """The sorted multiset of numbers still usable after ``steps``; ValueError on an illegal step."""
    pool = Counter(problem.numbers)
    for i, step in enumerate(steps):
        try:
            _apply_step(pool, _as_step(step))
        except ValueError as exc:
            raise ValueError(f"steps[{i}]: {exc}") from None
    return tuple(sorted(pool.elements()))


def is_solved(problem: Problem, steps: Sequence[Union[str, Step]]) -> bool:
    """Whether ``steps`` (lines or Steps) solve ``problem``; False for any illegal step."""
    for s in steps:
        if not isinstance(s, (str, Step)):
            raise TypeError(f"a step must be a str line or a Step, got {type(s).__name__}")
    return bool(steps) and check(problem, "\n".join(str(s) for s in steps)).ok


def is_terminal(problem: Problem, steps: Sequence[Union[str, Step]]) -> bool:
    """True when no further step can follow: an illegal step, the target reached (classic: by
    any line; all-numbers: with one number left), or fewer than two numbers left."""
    pool = Counter(problem.numbers)
    for step in steps:
        try:
            s = _as_step(step)
            _apply_step(pool, s)
        except ValueError:
            return True
        if not problem.all_numbers and s.result == problem.target:
            return True
    return sum(pool.values()) < 2


def legal_steps(problem: Problem, steps: Sequence[Union[str, Step]]) -> List[str]:
    """Every legal next step line after ``steps``, operands larger-first as traces write them
    (``"7 + 3 = 10"``), without duplicates; empty when :func:`is_terminal` holds."""
    if is_terminal(problem, steps):
        return []
    return list(_state_lines(remaining(problem, steps)))


@functools.lru_cache(maxsize=1 << 14)
def _state_lines(state: Tuple[int, ...]) -> Tuple[str, ...]:
    return tuple(f"{a} {op} {b} = {c}" for (a, op, b, c), _ in _solver.moves(state))


def check_expression(problem: Problem, expr: str) -> Optional[str]:
    """None when ``expr`` is a valid answer for ``problem``, else the reason it is not."""
    try:
        value, leaves = evaluate_expression(expr)
    except ValueError as exc:
        return f"answer {expr!r}: {exc}"
    extra = Counter(leaves) - Counter(problem.numbers)
    if extra:
        return f"answer {expr!r} uses {sorted(extra.elements())} more often than the numbers allow"
    if problem.all_numbers and Counter(leaves) != Counter(problem.numbers):
        return f"answer {expr!r} does not use every number once"
    if value != problem.target:
        return f"answer {expr!r} evaluates to {value}, not the target {problem.target}"
    return None


def answer_expression(problem: Problem, steps: Sequence[Union[str, Step]]) -> str:
    """One fully parenthesised expression equivalent to ``steps``, e.g. ``"((25 - 5) * (3 + 7))"``.

    ``steps`` must solve ``problem`` (ValueError otherwise). An operand that is both a given
    number and an earlier result is read as the most recent result. The expression is checked
    by evaluating it before it is returned.
    """
    parsed = [_as_step(s) for s in steps]
    result = check(problem, "\n".join(str(s) for s in parsed))
    if not result.ok:
        raise ValueError(f"steps do not solve the problem: {result.reason}")
    return result.answer_expr


def check(problem: Problem, text: str) -> CheckResult:
    """Exact verdict on a completion: step lines, optionally an ``answer: (...)`` last line.

    ``text`` may start with the prompt line (it is skipped); trailing blank lines are ignored.
    Any legal solution is accepted; every rejection names the line and what is wrong.
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a Problem, got {type(problem).__name__}")
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    lines = text.split("\n")
    if lines and lines[0].strip() == problem.prompt().strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines.pop()
    answer = None
    if lines and lines[-1].strip().startswith(ANSWER_PREFIX):
        answer = lines.pop().strip()[len(ANSWER_PREFIX):].strip()
    steps: List[Step] = []

    def fail(reason: str) -> CheckResult:
        return CheckResult(False, reason, tuple(steps), None)

    pool = Counter(problem.numbers)
    for i, line in enumerate(lines, 1):
        if steps and not problem.all_numbers and steps[-1].result == problem.target:
            return fail(f"line {i}: a step after the target was reached on line {i - 1}")
        try:
            step = parse_step(line)
            _apply_step(pool, step)
        except ValueError as exc:
            return fail(f"line {i}: {exc}")
        steps.append(step)
    if not steps:
        return fail("no step lines")
    last = steps[-1].result
    if problem.all_numbers:
        left = sorted(pool.elements())
        if len(left) != 1:
            return fail(f"numbers left unused: {' '.join(map(str, left))} (rule 'all' uses every number)")
        if last != problem.target:
            return fail(f"the last result {last} is not the target {problem.target}")
    elif last != problem.target:
        return fail(f"the target {problem.target} is never reached (last result {last})")
    expr = build_expression(problem.numbers, [(x.a, x.op, x.b, x.result) for x in steps])
    recheck = check_expression(problem, expr)
    if recheck is not None:
        # Unreachable for legal steps: the expression is evaluated independently of the
        # step bookkeeping above, so a bug in either shows up here instead of a false "solved".
        return fail(f"the steps' expression fails its re-check: {recheck}")
    if answer is not None:
        bad = check_expression(problem, answer)
        if bad is not None:
            return fail(bad)
    return CheckResult(True, "solved", tuple(steps), expr)


_SOLUTIONS = ("all_solutions", "generate", "is_solvable", "solutions", "solve")


def __getattr__(name: str):
    # The solver front ends and the generator live in countdown_solutions (they build on the
    # Problem type defined here); they stay reachable as countdown.<name>.
    if name in _SOLUTIONS:
        from ponder.tasks import countdown_solutions

        return getattr(countdown_solutions, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
