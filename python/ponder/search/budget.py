"""When a search stops: budgets and stopping criteria, checked per problem after every round."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

STOP_REASONS = ("max_iterations", "max_expansions", "max_tokens", "max_seconds", "max_kv_bytes", "converged",
                "verified", "exhausted", "cancelled", "error")


@dataclass(frozen=True)
class Budget:
    """Stopping criteria; any combination, applied to each problem separately.

    max_iterations: rounds of the algorithm (MCTS: select-expand-backup rounds; beam search:
        steps; best-of-N: steps of the N chains).
    max_expansions: expanded nodes (a node expanded into k children counts once).
    max_tokens: generated tokens.
    max_seconds: wall-clock seconds since the search (or the resume) started.
    max_kv_bytes: KV bytes in use by the engine (shared by every problem in the call).
    converge_tol / converge_patience: stop when the best answer and the root value have not
        changed by more than ``converge_tol`` for ``converge_patience`` rounds.
    stop_on_verified: stop a problem as soon as a verifier accepts one of its answers.

    At least one hard limit (iterations, expansions, tokens or seconds) is required, so that
    every search ends; the other criteria can only end it earlier. No round is free: a round
    that expands nothing for a problem (MCTS selected only terminal leaves) is charged as one
    expansion and one token against ``max_expansions`` / ``max_tokens`` (``Usage.empty_rounds``),
    so every hard limit ends the search.
    """

    max_iterations: Optional[int] = None
    max_expansions: Optional[int] = None
    max_tokens: Optional[int] = None
    max_seconds: Optional[float] = None
    max_kv_bytes: Optional[int] = None
    converge_tol: Optional[float] = None
    converge_patience: Optional[int] = None
    stop_on_verified: bool = False

    def __post_init__(self):
        for name in ("max_iterations", "max_expansions", "max_tokens", "max_kv_bytes", "converge_patience"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"Budget.{name} must be an int >= 1 or None, got {v!r}")
        for name in ("max_seconds", "converge_tol"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0):
                raise ValueError(f"Budget.{name} must be a finite number >= 0 or None, got {v!r}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError(f"Budget.max_seconds must be > 0, got {self.max_seconds!r}")
        if (self.converge_tol is None) != (self.converge_patience is None):
            raise ValueError("Budget.converge_tol and Budget.converge_patience go together: set both or neither")
        if not isinstance(self.stop_on_verified, bool):
            raise TypeError(f"Budget.stop_on_verified must be a bool, got {self.stop_on_verified!r}")
        if all(getattr(self, n) is None for n in ("max_iterations", "max_expansions", "max_tokens", "max_seconds")):
            raise ValueError(
                "this budget can never stop a search: set at least one of max_iterations, max_expansions, "
                "max_tokens or max_seconds (convergence, stop_on_verified and max_kv_bytes only stop it earlier)"
            )


@dataclass
class Usage:
    """What one problem has spent so far (counters checked against a :class:`Budget`)."""

    iterations: int = 0
    expansions: int = 0
    tokens: int = 0
    empty_rounds: int = 0  # rounds that expanded nothing; charged against the hard limits
    started: float = 0.0
    stable_rounds: int = 0
    last_answer: Optional[int] = None
    last_value: Optional[float] = None

    def observe(self, answer: Optional[int], value: Optional[float], tol: Optional[float]) -> None:
        """Track convergence: the best answer node and the root value after a round."""
        same_answer = answer == self.last_answer
        same_value = (value is None and self.last_value is None) or (
            value is not None and self.last_value is not None and tol is not None and abs(value - self.last_value) <= tol
        )
        self.stable_rounds = self.stable_rounds + 1 if (same_answer and same_value) else 0
        self.last_answer, self.last_value = answer, value


def check(budget: Budget, usage: Usage, now: float, kv_bytes: int, verified: bool) -> Optional[str]:
    """The first stop reason that applies, or None to go on."""
    if budget.stop_on_verified and verified:
        return "verified"
    if budget.max_iterations is not None and usage.iterations >= budget.max_iterations:
        return "max_iterations"
    if budget.max_expansions is not None and usage.expansions + usage.empty_rounds >= budget.max_expansions:
        return "max_expansions"
    if budget.max_tokens is not None and usage.tokens + usage.empty_rounds >= budget.max_tokens:
        return "max_tokens"
    if budget.max_seconds is not None and now - usage.started >= budget.max_seconds:
        return "max_seconds"
    if budget.max_kv_bytes is not None and kv_bytes >= budget.max_kv_bytes:
        return "max_kv_bytes"
    if budget.converge_patience is not None and usage.stable_rounds >= budget.converge_patience:
        return "converged"
    return None
