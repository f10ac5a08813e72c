"""Countdown's solver front ends (exact solvability, shortest / sampled / all solutions as step
lines) and its seeded problem generator, on :class:`ponder.tasks.countdown.Problem`."""

from __future__ import annotations

import random
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from ponder.tasks import solver as _solver
from ponder.tasks.countdown import MAX_NUMBERS, Problem, is_int as _is_int

def _lines(steps: Sequence[_solver.SolverStep]) -> List[str]:
    return [f"{a} {op} {b} = {c}" for a, op, b, c in steps]


def _check_problem(problem) -> None:
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a Problem, got {type(problem).__name__}")


def is_solvable(problem: Problem, state: Optional[Iterable[int]] = None) -> bool:
    """Whether the target can still be reached from ``state``, the multiset of numbers left
    (default: the problem's numbers; see :func:`remaining`). Memoised across calls.

    Classic rule: a state that holds the target counts as reached. All-numbers rule: the
    state must reduce to exactly the target.
    """
    _check_problem(problem)
    if state is None:
        state = problem.numbers
    try:
        values = tuple(sorted(state))
    except TypeError:
        raise TypeError(f"state must be an iterable of ints, got {state!r}") from None
    if not values or not all(_is_int(x) and x >= 1 for x in values):
        raise ValueError(f"state must be a non-empty multiset of positive ints, got {values}")
    return _solver.solvable(values, problem.target, problem.all_numbers)


def solve(problem: Problem) -> Optional[List[str]]:
    """A shortest solution as step lines (deterministic), or None when there is none."""
    _check_problem(problem)
    steps = _solver.shortest_solution(problem.numbers, problem.target, problem.all_numbers)
    return None if steps is None else _lines(steps)


def solutions(problem: Problem, limit: int = 16, seed: int = 0, max_steps: Optional[int] = None) -> List[List[str]]:
    """Up to ``limit`` distinct solutions of at most ``max_steps`` steps (default: any) in
    varied orders, drawn by seeded random descents.

    Every step of every solution contributes to the answer. Fewer than ``limit`` come back
    when the problem has fewer (or they are not found in ``8 * limit`` draws).
    """
    _check_problem(problem)
    if not _is_int(limit) or limit < 1:
        raise ValueError(f"limit must be a positive int, got {limit!r}")
    if max_steps is not None and (not _is_int(max_steps) or max_steps < 1):
        raise ValueError(f"max_steps must be None or a positive int, got {max_steps!r}")
    rng = random.Random(seed)
    found: dict = {}
    for _ in range(8 * limit):
        steps = _solver.sample_solution(problem.numbers, problem.target, problem.all_numbers, rng, max_steps)
        if steps is None:
            return []
        found.setdefault(tuple(steps), None)
        if len(found) == limit:
            break
    return [_lines(s) for s in found]


def all_solutions(problem: Problem) -> List[List[str]]:
    """Every distinct solution whose steps all contribute, shortest first (exponential in
    the count of numbers: meant for up to 5 numbers)."""
    _check_problem(problem)
    return [_lines(s) for s in _solver.all_solutions(problem.numbers, problem.target, problem.all_numbers)]


def _count_range(num_numbers) -> Tuple[int, int]:
    lo, hi = (num_numbers, num_numbers) if _is_int(num_numbers) else tuple(num_numbers)
    if not (_is_int(lo) and _is_int(hi) and 2 <= lo <= hi <= MAX_NUMBERS):
        raise ValueError(f"num_numbers must be an int or an inclusive (lo, hi) pair within "
                         f"[2, {MAX_NUMBERS}], got {num_numbers!r}")
    return lo, hi


def generate(n: int, seed: int, num_numbers: Union[int, Tuple[int, int]] = 4, min_value: int = 1,
             max_value: int = 9, min_target: int = 10, max_target: int = 99, all_numbers: bool = False,
             solvable_only: bool = True) -> List[Problem]:
    """``n`` random problems, the same for the same arguments and ``seed``.

    Each problem's count of numbers is uniform over ``num_numbers`` (an int or an inclusive
    ``(lo, hi)``); its numbers are drawn uniformly (with repetition) from ``[min_value,
    max_value]`` and its target uniformly from ``[min_target, max_target]``. Classic draws
    whose target is one of the numbers are redrawn (same count), and so are unsolvable ones
    when ``solvable_only``. The defaults (digits 1-9, two-digit targets) are the distribution
    the bundled model is trained on.
    """
    if not _is_int(n) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not _is_int(seed):
        raise TypeError(f"seed must be an int, got {seed!r}")
    lo, hi = _count_range(num_numbers)
    for name, a, b in (("value", min_value, max_value), ("target", min_target, max_target)):
        if not (_is_int(a) and _is_int(b) and 1 <= a <= b):
            raise ValueError(f"min_{name} / max_{name} must be ints with 1 <= min <= max, got {a!r}, {b!r}")
    if not isinstance(all_numbers, bool):
        raise TypeError(f"all_numbers must be a bool, got {all_numbers!r}")
    rng = random.Random(seed)
    out: List[Problem] = []
    max_draws = 1000 + 200 * n
    count = rng.randint(lo, hi)
    for _ in range(max_draws):
        if len(out) == n:
            return out
        # The count is drawn once per problem, not per draw: redrawing it with every rejected
        # draw would starve the sizes that are less often solvable.
        numbers = tuple(rng.randint(min_value, max_value) for _ in range(count))
        target = rng.randint(min_target, max_target)
        if not all_numbers and target in numbers:
            continue
        problem = Problem(numbers, target, all_numbers)
        if solvable_only and not is_solvable(problem):
            continue
        out.append(problem)
        count = rng.randint(lo, hi)
    if len(out) == n:
        return out
    raise ValueError(f"found only {len(out)} of {n} problems in {max_draws} draws: the knobs (num_numbers="
                     f"{num_numbers}, values [{min_value}, {max_value}], targets [{min_target}, {max_target}], "
                     f"all_numbers={all_numbers}) admit too few{' solvable' if solvable_only else ''} problems")
