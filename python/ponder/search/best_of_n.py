"""Best-of-N: N complete samples that share the prompt's KV, then one is picked.

Round 0 expands each root into ``n`` children; each later round extends every unfinished chain
by one step (one child), until every chain is terminal or ``max_steps`` steps long. Selection:
``score`` (highest path score), ``vote`` (the most frequent extracted answer among finished
chains; ties broken by the best score) or ``weighted_vote`` (answers weighted by the sum of
their chains' path scores).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from ponder.search.session import Session
from ponder.search.state import MAX_FANOUT, Children, Selection, TreeState

SELECTIONS = ("score", "vote", "weighted_vote")


def last_line(text: str) -> str:
    """Default answer extractor: the last non-empty line, stripped."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


@dataclass(frozen=True)
class BestOfNConfig:
    n: int = 8
    selection: str = "score"
    max_steps: int = 16
    answer_fn: Optional[Callable[[str], str]] = None

    def __post_init__(self):
        for name in ("n", "max_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"BestOfNConfig.{name} must be an int >= 1, got {v!r}")
        if self.n > MAX_FANOUT:
            raise ValueError(f"BestOfNConfig.n must be at most {MAX_FANOUT}, got {self.n!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"BestOfNConfig.selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.answer_fn is not None and not callable(self.answer_fn):
            raise TypeError("BestOfNConfig.answer_fn must be callable(text) -> str")


@dataclass
class BestOfNState:
    """Per tree: the current last node of every chain, and the steps taken."""

    chains: List[int]
    steps: int = 0


class BestOfN(Session):
    algorithm = "best_of_n"

    def __init__(self, policy, scorer, config: BestOfNConfig, **kwargs):
        super().__init__(policy, scorer, **kwargs)
        if not isinstance(config, BestOfNConfig):
            raise TypeError(f"config must be a BestOfNConfig, got {type(config).__name__}")
        self.config = config

    def new_state(self, tree: TreeState) -> BestOfNState:
        return BestOfNState(chains=[tree.root])

    def _open(self, tree: TreeState) -> List[int]:
        return [c for c in tree.algo.chains if not self.forest.terminal[c]]

    def select(self, trees: List[TreeState]) -> Selection:
        """The root into ``n`` chains, then every open chain by one step."""
        sel = Selection()
        for t in trees:
            for c in self._open(t):
                sel.add(t, c, self.config.n if c == t.root else 1)
        return sel

    def update(self, sel: Selection, kids: Children) -> None:
        if not sel.nodes:
            return
        replaced: Dict[int, List[int]] = {}
        for p, ch in zip(kids.parents.tolist(), kids.nodes.tolist()):
            replaced.setdefault(p, []).append(ch)
        for t in {id(t): t for t in sel.trees}.values():
            t.algo.chains = [ch for c in t.algo.chains for ch in replaced.get(c, [c])]
            t.algo.steps += 1
        self.evict(sel.nodes)  # a chain's earlier step is never extended again

    def exhausted(self, tree: TreeState) -> bool:
        return not self._open(tree) or tree.algo.steps >= self.config.max_steps

    def answer(self, tree: TreeState) -> int:
        f = self.forest
        chains = tree.algo.chains
        if chains == [tree.root]:
            return tree.root
        ps = f.path_score
        done = [c for c in chains if f.terminal[c]] or chains
        if self.config.selection == "score":
            return max(done, key=lambda n: (float(ps[n]), -n))
        extract = self.config.answer_fn or last_line
        tally: Dict[str, float] = {}
        best: Dict[str, int] = {}
        for c in done:
            a = extract(self.text(c))
            tally[a] = tally.get(a, 0.0) + (1.0 if self.config.selection == "vote" else float(ps[c]))
            if a not in best or (float(ps[c]), -c) > (float(ps[best[a]]), -best[a]):
                best[a] = c
        winner = max(tally, key=lambda a: (tally[a], float(ps[best[a]]), -best[a]))
        return best[winner]
