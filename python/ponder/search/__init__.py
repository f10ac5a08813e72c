"""Search algorithms over reasoning steps, all driving one Forest + Engine.

``search(prompts, policy=engine, scorer=..., algorithm=..., budget=..., seed=0, **options)``
searches many problems at once: every round is one batched engine call over all still-active
trees. ``options`` are the fields of the algorithm's config dataclass (``MCTSConfig``,
``BeamConfig``, ``BestOfNConfig``); pass ``config=`` instead to give a whole config object.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Union

from ponder.expansion import SamplingParams, StepStop
from ponder.scoring import Aggregation, Verifier, resolve_scorer
from ponder.search.beam import BeamConfig, BeamSearch
from ponder.search.best_of_n import BestOfN, BestOfNConfig
from ponder.search.budget import STOP_REASONS, Budget
from ponder.search.mcts import MCTS, MCTSConfig
from ponder.search.result import SearchResult
from ponder.search.token_beam import TokenBeamConfig, TokenBeamOutput, token_beam_search

ALGORITHMS = {"mcts": (MCTS, MCTSConfig), "beam_search": (BeamSearch, BeamConfig), "best_of_n": (BestOfN, BestOfNConfig)}

__all__ = ["ALGORITHMS", "STOP_REASONS", "BeamConfig", "BestOfNConfig", "Budget", "MCTSConfig", "SearchResult",
           "TokenBeamConfig", "TokenBeamOutput", "beam_search", "best_of_n", "mcts", "search", "token_beam_search"]


def _config(algorithm: str, config, options: dict):
    cls = ALGORITHMS[algorithm][1]
    if config is not None:
        if options:
            raise ValueError(f"conflicting options: pass either config= or option keywords {sorted(options)}, not both")
        if not isinstance(config, cls):
            raise TypeError(f"config for {algorithm!r} must be a {cls.__name__}, got {type(config).__name__}")
        return config
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for algorithm {algorithm!r}; valid: {sorted(fields)}")
    return cls(**options)


def search(prompts: Sequence, policy, scorer="value", algorithm: str = "mcts", budget: Optional[Budget] = None,
           seed: int = 0, *, verifier: Optional[Verifier] = None, aggregation: Union[str, Aggregation] = "last",
           token_cost: float = 0.0, stop: Optional[StepStop] = None, sampling: Optional[SamplingParams] = None,
           progress: bool = True, constraint=None,
           distinct: bool = False, on_error: str = "isolate", config=None, **options) -> List[SearchResult]:
    """Search every prompt with ``algorithm`` and return one :class:`SearchResult` each.

    Args:
        prompts: token-id lists, or strings when the policy engine has a tokenizer.
        policy: a :class:`ponder.Engine` (or an object with the same interface).
        scorer: ``"value"`` / :class:`ponder.ValueHead` (the policy's value head),
            :class:`ponder.TokenPairPRM`, any object with ``score(policy, expansion)``, or None
            (every step scores 0.5, so only priors, verifier and visits guide the search).
        algorithm: ``"mcts"``, ``"beam_search"`` or ``"best_of_n"``.
        budget: a :class:`Budget` applied to each problem; required for MCTS, defaults to
            ``max_steps`` rounds for beam search and best-of-N.
        seed: sampling seed; a problem's tree depends only on the seed and its prompt, never on
            the batch it is searched in.
        verifier: a :class:`ponder.Verifier` ground-truth checker.
        aggregation, token_cost: path-score aggregation mode (last | min | prod | mean) and the
            per-token penalty, or an :class:`Aggregation`.
        stop, sampling: when a step ends (:class:`StepStop`) and how tokens are drawn.
        progress: show a tqdm bar over rounds.
        constraint: constrained decoding, e.g. a task's legal moves. Fast path: a
            :class:`ponder.StepConstraint` listing each node's allowed next steps (compiled into a
            native token trie; no Python call per token). General fallback: a callable called
            before every sampled token with the problem index and the path's generated text so far
            (the step's partial text included), returning the token ids allowed next or None for
            any token (see ``Engine.expand(allowed_tokens=...)``): a Python call per branch per
            token, the slow path.
        distinct: the children of one node are distinct steps: a sampled step equal to a sibling
            is dropped (its tokens still count as generated), so a node may get fewer children
            than asked; with best-of-N, repeated first steps leave fewer than n chains.
        on_error: ``"isolate"`` (default): a verifier, scorer or constraint that raises or returns
            garbage for one problem fails that problem only (its result has ``stop_reason ==
            "error"`` and the exception in ``error``; its KV is freed) and the others go on;
            ``"raise"``: the first such failure propagates.
        config / options: the algorithm's config object, or its fields as keywords.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {sorted(ALGORITHMS)} "
                         f"(token-level beam search is ponder.token_beam_search)")
    cfg = _config(algorithm, config, options)
    if isinstance(aggregation, str):
        aggregation = Aggregation(aggregation, token_cost)
    elif token_cost:
        raise ValueError("conflicting options: token_cost is given both as an argument and inside aggregation")
    if budget is None:
        if algorithm == "mcts":
            raise ValueError("mcts needs a budget, e.g. ponder.Budget(max_expansions=64)")
        budget = Budget(max_iterations=cfg.max_steps)
    session_cls = ALGORITHMS[algorithm][0]
    session = session_cls(policy, resolve_scorer(scorer), cfg, verifier=verifier, aggregation=aggregation,
                          stop=stop if stop is not None else StepStop(),
                          sampling=sampling if sampling is not None else SamplingParams(), seed=seed,
                          progress=progress, constraint=constraint, distinct=distinct, on_error=on_error)
    session.start(prompts, budget)
    session.run()
    return session.results()


def mcts(prompts, policy, scorer="value", budget: Optional[Budget] = None, seed: int = 0, **kwargs) -> List[SearchResult]:
    """MCTS over steps; see :func:`search` and :class:`MCTSConfig` for the options."""
    return search(prompts, policy, scorer, "mcts", budget, seed, **kwargs)


def beam_search(prompts, policy, scorer="value", budget: Optional[Budget] = None, seed: int = 0, **kwargs) -> List[SearchResult]:
    """Step-level beam search (DVTS with ``num_subtrees``); see :func:`search` and :class:`BeamConfig`."""
    return search(prompts, policy, scorer, "beam_search", budget, seed, **kwargs)


def best_of_n(prompts, policy, scorer="value", budget: Optional[Budget] = None, seed: int = 0, **kwargs) -> List[SearchResult]:
    """Best-of-N sampling with score / vote / weighted-vote selection; see :func:`search` and
    :class:`BestOfNConfig`."""
    return search(prompts, policy, scorer, "best_of_n", budget, seed, **kwargs)
