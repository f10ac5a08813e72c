"""Independent oracles for the Countdown tests: plain simulation and brute force, sharing no
code with ponder.tasks."""

from __future__ import annotations

import itertools
import re
from fractions import Fraction


def oracle_ok(problem, text: str) -> bool:
    """Whether ``text`` (step lines only) solves ``problem`` under the documented rules."""
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    pool = list(problem.numbers)
    results = []
    for line in lines:
        m = re.fullmatch(r"\s*(\d+)\s*([-+*/])\s*(\d+)\s*=\s*(\d+)\s*", line)
        if not m or any(len(t) > 1 and t[0] == "0" for t in (m[1], m[3], m[4])):
            return False
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        if results and not problem.all_numbers and results[-1] == problem.target:
            return False
        exact = {"+": Fraction(a + b), "-": Fraction(a - b), "*": Fraction(a * b),
                 "/": Fraction(a, b) if b else Fraction(-1)}[op]
        if exact.denominator != 1 or exact <= 0 or exact != c:
            return False
        for x in (a, b):
            if x not in pool:
                return False
            pool.remove(x)
        pool.append(c)
        results.append(c)
    if not results:
        return False
    if problem.all_numbers:
        return pool == [problem.target]
    return results[-1] == problem.target


def brute_min_steps(numbers, target, all_numbers):
    """Fewest steps of any legal sequence solving the problem (None if unsolvable)."""
    best = None

    def walk(pool, depth):
        nonlocal best
        for i, j in itertools.permutations(range(len(pool)), 2):
            a, b = pool[i], pool[j]
            rest = [x for k, x in enumerate(pool) if k not in (i, j)]
            for c in (a + b, a * b, a - b if a > b else None, a // b if a % b == 0 else None):
                if c is None:
                    continue
                done = (c == target) if not all_numbers else (not rest and c == target)
                if done:
                    best = depth + 1 if best is None else min(best, depth + 1)
                elif rest:
                    walk(rest + [c], depth + 1)

    walk(list(numbers), 0)
    return best


def brute_solvable(state, target, all_numbers) -> bool:
    """Whether the target is (classic: already in, or) reachable from the multiset ``state``."""
    if all_numbers and len(state) == 1:
        return state[0] == target
    if not all_numbers and target in state:
        return True
    return brute_min_steps(state, target, all_numbers) is not None
