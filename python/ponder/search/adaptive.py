"""A shared compute budget for a batch: rounds go to the problems where more thinking pays.

``search(..., budget=Budget(max_tokens=B // N))`` gives every problem the same share; a problem
solved early leaves its share unused, a hard one stops at its share. :func:`adaptive_search`
gives the whole batch one budget instead (:class:`SharedBudget`, total tokens or expansions) and
runs rounds until it is spent:

* a problem stops when its answer is verified (or the algorithm is exhausted): what it did not
  spend stays with the others;
* a problem whose root value has converged (moved by at most ``converge_tol`` over
  ``converge_patience`` rounds, after ``min_expansions``) is *parked*: it gets no rounds while
  any unparked problem is open, and it is picked up again only when none is;
* of the others, every problem with fewer than ``min_expansions`` gets a round, and of the rest
  the ``focus`` share with the highest root value (the value model's estimate that the problem
  will still be solved): easy problems are finished first, doubtful ones wait until the
  promising ones are done. The order of events never depends on the budget: a run with a smaller
  budget is a prefix of a run with a larger one (only its last round, which takes the most
  promising problems that its remainder pays for, may differ). ``AdaptiveRun.trajectory``
  records the whole anytime curve.
"""

from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Sequence

from ponder.expansion import SamplingParams, StepStop
from ponder.scoring import Aggregation, Verifier, resolve_scorer
from ponder.search.budget import Budget


@dataclasses.dataclass(frozen=True)
class SharedBudget:
    """One budget for a whole batch: ``max_tokens`` generated tokens and / or ``max_expansions``
    expanded nodes in total (at least one). ``per_problem``: a hard cap each problem also obeys
    (default: none beyond the shared one). ``converge_tol`` / ``converge_patience`` /
    ``min_expansions``: when a problem's value has converged and it is parked. ``focus`` in
    (0, 1]: the share of the open, explored problems that get each round (1: all of them)."""

    max_tokens: Optional[int] = None
    max_expansions: Optional[int] = None
    per_problem: Optional[Budget] = None
    converge_tol: float = 0.02
    converge_patience: int = 3
    min_expansions: int = 4
    focus: float = 1.0

    def __post_init__(self):
        for name in ("max_tokens", "max_expansions"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"SharedBudget.{name} must be an int >= 1 or None, got {v!r}")
        if self.max_tokens is None and self.max_expansions is None:
            raise ValueError("SharedBudget needs max_tokens or max_expansions (or both): a total that ends the search")
        if self.per_problem is not None and not isinstance(self.per_problem, Budget):
            raise TypeError(f"SharedBudget.per_problem must be a ponder.Budget or None, got "
                            f"{type(self.per_problem).__name__}")
        if isinstance(self.converge_tol, bool) or not isinstance(self.converge_tol, (int, float)) \
                or not self.converge_tol >= 0:
            raise ValueError(f"SharedBudget.converge_tol must be a number >= 0, got {self.converge_tol!r}")
        if isinstance(self.focus, bool) or not isinstance(self.focus, (int, float)) or not 0 < self.focus <= 1:
            raise ValueError(f"SharedBudget.focus must lie in (0, 1], got {self.focus!r}")
        for name in ("converge_patience", "min_expansions"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"SharedBudget.{name} must be an int >= 1, got {v!r}")


@dataclasses.dataclass
class AdaptiveRun:
    """``results``: one :class:`~ponder.SearchResult` per prompt. ``trajectory``: after every
    scheduling round, ``(tokens, expansions, verified)`` totals over the batch. ``tokens`` /
    ``expansions``: what the batch spent."""

    results: list
    trajectory: List[tuple]
    tokens: int
    expansions: int


def tokens_to_reach(trajectory: Sequence[tuple], num_verified: int) -> Optional[int]:
    """The batch tokens at which ``trajectory`` first holds ``num_verified`` verified problems
    (None: never)."""
    for tokens, _, verified in trajectory:
        if verified >= num_verified:
            return int(tokens)
    return None


def adaptive_search(prompts: Sequence, policy, scorer="value", algorithm: str = "mcts",
                    budget: Optional[SharedBudget] = None, seed: int = 0, *, verifier: Optional[Verifier] = None,
                    aggregation: str = "last", stop: Optional[StepStop] = None,
                    sampling: Optional[SamplingParams] = None, progress: bool = False, constraint=None,
                    distinct: bool = False, **options) -> AdaptiveRun:
    """Search every prompt under one :class:`SharedBudget` for the batch; arguments as for
    :func:`ponder.search` (``options``: the algorithm's config fields)."""
    from ponder.search import ALGORITHMS

    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {sorted(ALGORITHMS)}")
    if not isinstance(budget, SharedBudget):
        raise TypeError(f"budget must be a ponder.SharedBudget, got {type(budget).__name__}")
    cfg_cls = ALGORITHMS[algorithm][1]
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cfg_cls)})
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for algorithm {algorithm!r}")
    cfg = cfg_cls(**options)
    session = ALGORITHMS[algorithm][0](
        policy, resolve_scorer(scorer), cfg, verifier=verifier, aggregation=Aggregation(aggregation),
        stop=stop if stop is not None else StepStop(), sampling=sampling if sampling is not None else SamplingParams(),
        seed=seed, progress=False, constraint=constraint, distinct=distinct)
    # Each problem's own budget only caps it (the shared one is checked here); stop_on_verified
    # hands the rest of a solved problem's share to the others.
    cap = budget.per_problem or Budget(max_expansions=budget.max_expansions or budget.max_tokens,
                                       max_tokens=budget.max_tokens)
    session.start(prompts, dataclasses.replace(cap, stop_on_verified=True))
    return _run(session, budget, progress)


def _run(session, budget: SharedBudget, progress: bool) -> AdaptiveRun:
    from tqdm.auto import tqdm

    trees = session.trees
    history = {id(t): [] for t in trees}  # root value after each of the tree's rounds
    trajectory = []
    bar = tqdm(desc=f"{session.algorithm} (shared budget)", unit="round", disable=not progress, leave=False)

    def spent():
        return sum(t.usage.tokens for t in trees), sum(t.usage.expansions for t in trees)

    def parked(t) -> bool:
        h = history[id(t)]
        if t.usage.expansions < budget.min_expansions or len(h) <= budget.converge_patience:
            return False
        recent = [v for v in h[-budget.converge_patience - 1:] if v is not None]
        return len(recent) == budget.converge_patience + 1 and max(recent) - min(recent) <= budget.converge_tol

    def cost(t):
        """Expected (tokens, expansions) of the tree's next round: its average so far."""
        n = max(1, t.usage.iterations)
        return t.usage.tokens / n, t.usage.expansions / n

    try:
        while True:
            tokens, expansions = spent()
            open_ = [t for t in trees if t.stop_reason is None]
            over = ("max_tokens" if budget.max_tokens is not None and tokens >= budget.max_tokens else
                    "max_expansions" if budget.max_expansions is not None and expansions >= budget.max_expansions
                    else None)
            if not open_ or over:
                for t in open_:
                    t.stop_reason = over
                break
            active = _focus([t for t in open_ if not parked(t)] or open_, budget, session)
            active = _fit(active, cost, budget, tokens, expansions, session)
            session.step(active)  # one round, then each tree's own budget, verdict and exhaustion
            for t in active:
                history[id(t)].append(session.root_value(t))
            tokens, expansions = spent()
            trajectory.append((tokens, expansions, sum(bool(t.verified) for t in trees)))
            bar.update(1)
            bar.set_postfix(open=len(open_), tokens=tokens, verified=trajectory[-1][2])
    finally:
        bar.close()
    tokens, expansions = spent()
    return AdaptiveRun(session.results(), trajectory, tokens, expansions)


def _promise(session):
    def key(t):
        v = session.root_value(t)
        return (-(v if v is not None else 1.0), t.usage.expansions, t.index)

    return key


def _focus(trees, budget: SharedBudget, session):
    """The problems still being explored plus the ``budget.focus`` share of the others with the
    highest root value (at least one)."""
    young = [t for t in trees if t.usage.expansions < budget.min_expansions]
    rest = sorted((t for t in trees if t.usage.expansions >= budget.min_expansions), key=_promise(session))
    keep = rest[:max(1 if not young else 0, math.ceil(budget.focus * len(rest)))]
    return sorted(young + keep, key=lambda t: t.index)


def _fit(active, cost, budget: SharedBudget, tokens: int, expansions: int, session):
    """The trees of the next round: all of ``active`` when the remaining budget pays for their
    expected cost, else the most promising ones (highest root value, then fewest expansions) that
    it pays for, at least one."""
    need_tok = sum(cost(t)[0] for t in active)
    need_exp = sum(cost(t)[1] for t in active)
    left_tok = budget.max_tokens - tokens if budget.max_tokens is not None else float("inf")
    left_exp = budget.max_expansions - expansions if budget.max_expansions is not None else float("inf")
    if need_tok <= left_tok and need_exp <= left_exp:
        return active

    chosen = []
    for t in sorted(active, key=_promise(session)):
        c_tok, c_exp = cost(t)
        if chosen and (c_tok > left_tok or c_exp > left_exp):
            continue
        chosen.append(t)
        left_tok, left_exp = left_tok - c_tok, left_exp - c_exp
    return sorted(chosen, key=lambda t: t.index)
