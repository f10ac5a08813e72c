"""Countdown answer expressions: evaluate one under the rules, or build one from step lines."""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Callable, List, Optional, Sequence, Tuple


def evaluate_expression(expr: str) -> Tuple[int, List[int]]:
    """Evaluate an answer expression under the Countdown rules: (value, numbers it uses).

    Every intermediate value must be a positive integer (ValueError naming the operation
    otherwise); ``*`` and ``/`` bind tighter than ``+`` and ``-``, both left-associative."""
    tokens = re.findall(r"\d+|[-+*/()]|\S", expr)
    pos = 0
    leaves: List[int] = []

    def peek() -> Optional[str]:
        return tokens[pos] if pos < len(tokens) else None

    def combine(x: Fraction, op: str, y: Fraction) -> Fraction:
        value = {"+": x + y, "-": x - y, "*": x * y, "/": x / y if y else None}[op]
        if value is None or value.denominator != 1 or value <= 0:
            raise ValueError(f"{x} {op} {y} is not a positive integer")
        return value

    def factor() -> Fraction:
        nonlocal pos
        tok = peek()
        if tok == "(":
            pos += 1
            value = sum_()
            if peek() != ")":
                raise ValueError(f"missing ')' in {expr!r}")
            pos += 1
            return value
        if tok is None or not tok.isdigit():
            raise ValueError(f"expected a number or '(' in {expr!r}, got {tok!r}")
        pos += 1
        leaves.append(int(tok))
        return Fraction(int(tok))

    def level(operand: Callable[[], Fraction], ops: Tuple[str, str]) -> Callable[[], Fraction]:
        """One precedence level: ``operand (op operand)*``, left-associative."""

        def parse() -> Fraction:
            nonlocal pos
            value = operand()
            while peek() in ops:
                op = tokens[pos]
                pos += 1
                value = combine(value, op, operand())
            return value

        return parse

    product = level(factor, ("*", "/"))
    sum_ = level(product, ("+", "-"))

    value = sum_()
    if pos != len(tokens):
        raise ValueError(f"unexpected {tokens[pos]!r} in {expr!r}")
    return int(value), leaves


def build_expression(numbers: Sequence[int], steps: Sequence[Tuple[int, str, int, int]]) -> str:
    """One fully parenthesised expression for ``steps`` ``(a, op, b, result)`` over ``numbers``."""
    # Items are (value, expression); results are appended, so scanning from the end prefers
    # the most recent result over a given number of the same value.
    items: List[Tuple[int, str]] = [(x, str(x)) for x in numbers]
    for a, op, b, result in steps:
        exprs = []
        for operand in (a, b):
            idx = max(i for i, (v, _) in enumerate(items) if v == operand)
            exprs.append(items.pop(idx)[1])
        items.append((result, f"({exprs[0]} {op} {exprs[1]})"))
    return items[-1][1]
