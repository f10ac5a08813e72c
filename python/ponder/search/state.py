"""Typed state of a search: per problem (:class:`TreeState`), per node (:class:`NodeData`), and
what one round hands from step to step (:class:`Selection`, :class:`Children`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

import numpy as np

from ponder.search.budget import Budget, Usage

# Children per expanded node, leaves per tree, beams, samples: far above any useful search, and
# low enough that a typo (10**12) is refused before anything is allocated.
MAX_FANOUT = 1 << 16


@dataclass
class TreeState:
    """One problem of a search call: its root node, budget, spending and stop reason."""

    index: int  # problem index within the call
    root: int  # forest node id of the root
    budget: Budget
    usage: Usage = field(default_factory=Usage)
    stop_reason: Optional[str] = None
    num_nodes: int = 1  # nodes made in this tree so far: the next tree-local id
    verified: List[int] = field(default_factory=list)  # nodes a verifier accepted (score 1)
    previous_answer: Optional[int] = None  # answer before a resume
    algo: Any = None  # the algorithm's own typed per-tree state
    error: Optional[str] = None  # why the problem failed (stop_reason "error")


class ProblemFailure(Exception):
    """A callback (verifier, scorer, constraint) failed for one problem: ``tree`` names it,
    ``__cause__`` holds the original exception."""

    def __init__(self, tree: TreeState, what: str, cause: BaseException):
        super().__init__(f"{what} failed for problem {tree.index}: {type(cause).__name__}: {cause}")
        self.tree, self.what, self.cause = tree, what, cause


@dataclass
class Selection:
    """What a round expands: ``nodes[i]`` of ``trees[i]`` into ``counts[i]`` children (nodes
    distinct). Algorithms subclass it to carry what their update step needs."""

    trees: List[TreeState] = field(default_factory=list)
    nodes: List[int] = field(default_factory=list)
    counts: List[int] = field(default_factory=list)

    def add(self, tree: TreeState, node: int, count: int) -> None:
        self.trees.append(tree)
        self.nodes.append(int(node))
        self.counts.append(int(count))


@dataclass
class Children:
    """The children one round added, grouped by parent in selection order (C of them).

    nodes / parents: int32 [C] forest ids; trees: the TreeState of each; scores: float32 [C]
    step scores (verifier verdicts included); terminal: bool [C]; verified: bool [C], a verifier
    accepted the child (score 1); logprob: float64 [C], the
    step's log-probability under the sampling distribution; agg: the path aggregate of the step
    scores (before the token cost) when the fused scorer computed it, else None.
    """

    nodes: np.ndarray
    parents: np.ndarray
    trees: List[TreeState]
    scores: np.ndarray
    terminal: np.ndarray
    verified: np.ndarray
    logprob: np.ndarray
    agg: Optional[np.ndarray] = None  # float64 [C] aggregated step scores when scored fused


    @classmethod
    def empty(cls) -> "Children":
        return cls(np.zeros(0, np.int32), np.zeros(0, np.int32), [], np.zeros(0, np.float32), np.zeros(0, bool),
                   np.zeros(0, bool), np.zeros(0, np.float64))


class NodeData:
    """Per-node search state that the Forest does not hold, as arrays indexed by node id:
    ``agg`` (float64: the aggregate of the path's step scores, before the token cost),
    ``gen_tokens`` (int64: generated tokens on the path) and ``local_id`` (int64: the node's id
    within its tree, in creation order; it keys sampling so a tree does not depend on its batch)."""

    def __init__(self, capacity: int = 1024) -> None:
        self.agg = np.zeros(capacity, np.float64)
        self.gen_tokens = np.zeros(capacity, np.int64)
        self.local_id = np.zeros(capacity, np.int64)

    def reserve(self, num_nodes: int) -> None:
        if num_nodes <= self.agg.size:
            return
        size = max(num_nodes, 2 * self.agg.size)
        for name in ("agg", "gen_tokens", "local_id"):
            old = getattr(self, name)
            new = np.zeros(size, old.dtype)
            new[: old.size] = old
            setattr(self, name, new)
