"""Exhaustive Countdown solver on plain multisets (sorted int tuples); memoised across problems.

:mod:`ponder.tasks.countdown` wraps these functions with its ``Problem`` type. A step is a
tuple ``(a, op, b, c)`` with ``a >= b`` (the larger-first spelling traces use).

A solution is *relevant* when every result but the last is used by a later step: the
solutions returned here never carry steps that do not contribute to the answer. To enforce
that, the search state splits the usable numbers into ``orig`` (given numbers, which may stay
unused) and ``pend`` (results, which must still be consumed).
"""

from __future__ import annotations

import bisect
import functools
import random
from typing import FrozenSet, Iterator, List, Optional, Tuple

State = Tuple[int, ...]
SolverStep = Tuple[int, str, int, int]

# Memo sizes: one entry is a key of a few small ints and a bool (~200 bytes), so 2**20 entries
# stay near 200 MiB at worst; labelling 10**5 states of 6-number problems needs ~3 * 10**5.
_MEMO_SIZE = 1 << 20
# Multisets of up to this many numbers are decided from their full value sets, which do not
# depend on the target and so are shared by every problem: a 4-number multiset of values up
# to 20 reaches a few hundred values (a few KiB per set; 2**15 sets stay well under 1 GiB).
_SET_MAX_SIZE = 4
_SET_MEMO_SIZE = 1 << 15


def _results(a: int, b: int) -> List[Tuple[str, int]]:
    """Legal ``a op b`` for ``a >= b``: positive integers only (no zero, no fraction)."""
    out = [("+", a + b), ("*", a * b)]
    if a > b:
        out.append(("-", a - b))
    if a % b == 0:
        out.append(("/", a // b))
    return out


def _insert(rest: State, value: int) -> State:
    i = bisect.bisect_left(rest, value)
    return rest[:i] + (value,) + rest[i:]


def moves(state: State) -> Iterator[Tuple[SolverStep, State]]:
    """Every distinct legal step from sorted multiset ``state`` and the sorted state after it."""
    n = len(state)
    seen = set()
    for i in range(n):
        for j in range(i + 1, n):
            b, a = state[i], state[j]
            if (a, b) in seen:
                continue
            seen.add((a, b))
            rest = state[:i] + state[i + 1:j] + state[j + 1:]
            for op, c in _results(a, b):
                yield (a, op, b, c), _insert(rest, c)


def _sub_multisets(ms: State) -> Iterator[Tuple[State, State]]:
    """Every distinct split of sorted ``ms`` into (part, rest), part non-empty."""
    seen = set()
    for mask in range(1, 1 << len(ms)):
        part = tuple(x for i, x in enumerate(ms) if mask >> i & 1)
        if part not in seen:
            seen.add(part)
            yield part, tuple(x for i, x in enumerate(ms) if not mask >> i & 1)


@functools.lru_cache(maxsize=_SET_MEMO_SIZE)
def full_values(ms: State) -> FrozenSet[int]:
    """Every value of an expression that uses each element of sorted multiset ``ms`` once."""
    if len(ms) == 1:
        return frozenset(ms)
    out = set()
    first, rest = ms[:1], ms[1:]
    # Splits (left, right) with the first element on the left count each unordered split once.
    splits = [((), rest)] + [(extra, right) for extra, right in _sub_multisets(rest) if right]
    for extra, right in splits:
        lefts = full_values(tuple(sorted(first + extra)))
        for y in full_values(right):
            for x in lefts:
                out.update(c for _, c in _results(max(x, y), min(x, y)))
    return frozenset(out)


@functools.lru_cache(maxsize=_SET_MEMO_SIZE)
def reach_values(ms: State) -> FrozenSet[int]:
    """Values that ``ms`` holds or that some step sequence from it produces (classic rule)."""
    out = set()
    for part, _ in _sub_multisets(ms):
        out |= full_values(part)
    return frozenset(out)


@functools.lru_cache(maxsize=_MEMO_SIZE)
def solvable(state: State, target: int, all_numbers: bool) -> bool:
    """Whether ``target`` can be reached from sorted multiset ``state``.

    Classic rule: some step sequence produces the target (a state already holding it counts
    as reached). All-numbers rule: the state can be reduced to exactly ``(target,)``.
    """
    if len(state) <= _SET_MAX_SIZE:
        return target in (full_values(state) if all_numbers else reach_values(state))
    if not all_numbers and target in state:
        return True
    children = []
    for (_, _, _, c), child in moves(state):
        if c == target and not all_numbers:
            return True
        children.append(child)
    return any(solvable(child, target, all_numbers) for child in dict.fromkeys(children))


# ---- relevant solutions (classic rule): orig = unused given numbers, pend = unconsumed results
Tagged = Tuple[State, State]


def _canon(orig: State, pend: State, all_numbers: bool) -> Tagged:
    # Under the all-numbers rule every number is consumed anyway, so the orig / pend split
    # carries no information: merging it keeps one memo entry per multiset.
    if all_numbers and pend:
        return tuple(sorted(orig + pend)), ()
    return orig, pend


def _tagged_moves(orig: State, pend: State, all_numbers: bool) -> Iterator[Tuple[SolverStep, State, State]]:
    orig, pend = _canon(orig, pend, all_numbers)
    items = [(v, 0) for v in orig] + [(v, 1) for v in pend]
    seen = set()
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            x, y = sorted((items[i], items[j]), reverse=True)
            if (x, y) in seen:
                continue
            seen.add((x, y))
            o, p = list(orig), list(pend)
            for v, tag in (x, y):
                (p if tag else o).remove(v)
            for op, c in _results(x[0], y[0]):
                yield (x[0], op, y[0], c), tuple(o), _insert(tuple(p), c)


def _finishes(orig: State, pend: State, c: int, target: int, all_numbers: bool) -> bool:
    """Whether a step leaving (orig, pend) with result c completes a relevant solution."""
    if c != target:
        return False
    return pend == (c,) and (not all_numbers or not orig)


@functools.lru_cache(maxsize=_MEMO_SIZE)
def _relevant(orig: State, pend: State, target: int, all_numbers: bool, budget: int) -> bool:
    """Whether a relevant solution of at most ``budget`` steps continues from (orig, pend)."""
    if budget <= 0 or len(orig) + len(pend) < 2:
        return False
    merged = tuple(sorted(orig + pend))
    if budget >= len(merged) - 1:
        # Unbounded: reaching the target at all is necessary, and its memo (no orig / pend
        # split) is smaller; under the all-numbers rule it is also sufficient, as every
        # solution is relevant there. Bounded searches skip this check: it would explore
        # deeper than the budget.
        if not solvable(merged, target, all_numbers):
            return False
        if all_numbers:
            return True
    elif all_numbers:
        return False  # the all-numbers rule takes exactly len(merged) - 1 more steps
    for (_, _, _, c), o, p in _tagged_moves(orig, pend, all_numbers):
        if _finishes(o, p, c, target, all_numbers):
            return True
        if c == target and not all_numbers:
            continue  # the game would end here with unused results: not a relevant solution
        if budget > 1 and _relevant(*_canon(o, p, all_numbers), target, all_numbers, budget - 1):
            return True
    return False


def _classify(step: SolverStep, o: State, p: State, target: int, all_numbers: bool,
              budget: int) -> Tuple[bool, Optional[Tagged]]:
    """(good, child): good when the step keeps a relevant solution within ``budget``; child is
    the next node, None when the step finishes a solution."""
    if _finishes(o, p, step[3], target, all_numbers):
        return True, None
    if step[3] == target and not all_numbers:
        return False, None
    child = _canon(o, p, all_numbers)
    return budget > 1 and _relevant(*child, target, all_numbers, budget - 1), child


def _good_moves(orig: State, pend: State, target: int, all_numbers: bool,
                budget: int) -> Iterator[Tuple[SolverStep, Optional[Tagged]]]:
    """Steps that keep a relevant solution within ``budget`` (child None: the step finishes one)."""
    for step, o, p in _tagged_moves(orig, pend, all_numbers):
        good, child = _classify(step, o, p, target, all_numbers, budget)
        if good:
            yield step, child


def shortest_length(numbers: State, target: int, all_numbers: bool) -> Optional[int]:
    """The fewest steps of any solution, or None when there is none."""
    start = tuple(sorted(numbers))
    if not solvable(start, target, all_numbers):
        return None
    if all_numbers:
        return len(start) - 1
    # A shortest classic solution uses some k numbers in k - 1 steps, and no intermediate
    # result equals the target (a smaller subset would then do): the smallest subset whose
    # value set holds the target gives the length. Value sets are cheap up to _SET_MAX_SIZE.
    for k in range(2, min(len(start), _SET_MAX_SIZE) + 1):
        if any(target in full_values(part) for part, _ in _sub_multisets(start) if len(part) == k):
            return k - 1
    for budget in range(_SET_MAX_SIZE, len(start)):
        if _relevant(start, (), target, all_numbers, budget):
            return budget
    raise AssertionError(f"solvable({start}, {target}) but no relevant solution was found")


def shortest_solution(numbers: State, target: int, all_numbers: bool) -> Optional[List[SolverStep]]:
    """A relevant solution with the fewest steps (deterministic), or None."""
    budget = shortest_length(numbers, target, all_numbers)
    if budget is None:
        return None
    steps: List[SolverStep] = []
    node: Optional[Tagged] = (tuple(sorted(numbers)), ())
    while node is not None:
        step, node = next(_good_moves(*node, target, all_numbers, budget - len(steps)))
        steps.append(step)
    return steps


def sample_solution(numbers: State, target: int, all_numbers: bool, rng: random.Random,
                    max_steps: Optional[int] = None) -> Optional[List[SolverStep]]:
    """One relevant solution of at most ``max_steps`` steps (default: any) drawn by a random
    descent, uniform over the good steps at each node; None when there is none."""
    start = tuple(sorted(numbers))
    budget = len(start) - 1 if max_steps is None else max_steps
    if not _relevant(start, (), target, all_numbers, budget):
        return None
    steps: List[SolverStep] = []
    node: Optional[Tagged] = (start, ())
    while node is not None:
        # The first good step of a uniformly shuffled list is uniform over the good steps, and
        # stopping there spares classifying the rest (each classification may be a search).
        candidates = list(_tagged_moves(*node, all_numbers))
        rng.shuffle(candidates)
        for step, o, p in candidates:
            good, child = _classify(step, o, p, target, all_numbers, budget - len(steps))
            if good:
                break
        else:
            raise AssertionError(f"no good step from {node} although a solution was promised")
        steps.append(step)
        node = child
    return steps


def all_solutions(numbers: State, target: int, all_numbers: bool) -> List[List[SolverStep]]:
    """Every distinct relevant solution (as step lists), sorted. Exponential in len(numbers):
    thousands of solutions for 6 numbers."""
    start = tuple(sorted(numbers))
    budget = len(start) - 1
    found = set()

    def walk(node: Tagged, prefix: Tuple[SolverStep, ...]) -> None:
        for step, child in _good_moves(*node, target, all_numbers, budget - len(prefix)):
            if child is None:
                found.add(prefix + (step,))
            else:
                walk(child, prefix + (step,))

    if _relevant(start, (), target, all_numbers, budget):
        walk((start, ()), ())
    return [list(s) for s in sorted(found, key=lambda s: (len(s), s))]
