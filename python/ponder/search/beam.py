"""Step-level beam search (and DVTS): keep the best ``width`` paths by aggregated score.

Round 0 expands each root into ``width * expansion`` children (``num_subtrees * expansion``
in DVTS mode); every later round expands each kept beam into ``expansion`` children. Children
that end their path (terminal, or accepted/rejected by a verifier) are completed candidates;
the others compete for the ``width`` beam slots by path score (per subtree in DVTS mode, where
each of the ``num_subtrees`` first-level children grows its own independent beam of ``width``).
Pruned children and expanded beams give their KV back at once (the nodes stay in the tree for
export and preference data). A tree is done when it holds ``width`` completed paths (per subtree
in DVTS), has no beam left or reached ``max_steps``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from ponder.search.session import Session
from ponder.search.state import MAX_FANOUT, Children, Selection, TreeState

@dataclass(frozen=True)
class BeamConfig:
    width: int = 4
    expansion: int = 4
    max_steps: int = 16
    num_subtrees: int = 0

    def __post_init__(self):
        for name, lo in (("width", 1), ("expansion", 1), ("max_steps", 1), ("num_subtrees", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"BeamConfig.{name} must be an int >= {lo}, got {v!r}")
        for name in ("width", "expansion", "num_subtrees"):
            if getattr(self, name) > MAX_FANOUT:
                raise ValueError(f"BeamConfig.{name} must be at most {MAX_FANOUT}, got {getattr(self, name)!r}")

@dataclass
class BeamState:
    """Per tree: the kept beams by group (group 0 until DVTS splits the root into subtrees),
    the completed paths, and the steps taken."""

    beams: Dict[int, List[int]]
    completed: List[int] = field(default_factory=list)
    steps: int = 0

@dataclass
class BeamSelection(Selection):
    group: Dict[int, int] = field(default_factory=dict)  # expanded beam -> its group

class BeamSearch(Session):
    algorithm = "beam_search"

    def __init__(self, policy, scorer, config: BeamConfig, **kwargs):
        super().__init__(policy, scorer, **kwargs)
        if not isinstance(config, BeamConfig):
            raise TypeError(f"config must be a BeamConfig, got {type(config).__name__}")
        self.config = config

    def new_state(self, tree: TreeState) -> BeamState:
        return BeamState(beams={0: [tree.root]})

    def select(self, trees: List[TreeState]) -> BeamSelection:
        """Every kept beam; the root gets a child per beam slot (per subtree in DVTS)."""
        cfg, sel = self.config, BeamSelection()
        for t in trees:
            for g, beams in t.algo.beams.items():
                for b in beams:
                    k = (cfg.num_subtrees or cfg.width) * cfg.expansion if b == t.root else cfg.expansion
                    sel.add(t, b, k)
                    sel.group[b] = g
        return sel

    def update(self, sel: BeamSelection, kids: Children) -> None:
        """Completed children set aside; the rest compete for ``width`` slots per group by path
        score (``Forest.top_k``); expanded and pruned beams give their KV back."""
        if not sel.nodes:
            return
        cfg = self.config
        cands: Dict[tuple, List[int]] = {}  # (tree index, group) -> candidate children
        seen: Dict[int, int] = {}  # children of each parent met so far in this round
        for t, p, ch, term in zip(kids.trees, kids.parents.tolist(), kids.nodes.tolist(), kids.terminal.tolist()):
            j = seen.get(p, 0)
            seen[p] = j + 1
            # DVTS: the root's children come in num_subtrees blocks of `expansion`, one per subtree
            g = j // cfg.expansion if (p == t.root and cfg.num_subtrees) else sel.group[p]
            if term:
                t.algo.completed.append(ch)
            else:
                cands.setdefault((t.index, g), []).append(ch)
        to_evict = list(sel.nodes)
        by_index = {t.index: t for t in sel.trees}
        for t in by_index.values():
            t.algo.steps += 1
            t.algo.beams = {}
        for (i, g), nodes in cands.items():
            kept = self.forest.top_k(nodes, cfg.width, key="path_score", by_tree=False).tolist()
            by_index[i].algo.beams[g] = kept
            to_evict.extend(sorted(set(nodes) - set(kept)))
        self.evict(to_evict)

    def exhausted(self, tree: TreeState) -> bool:
        st, cfg = tree.algo, self.config
        groups = max(1, cfg.num_subtrees)
        beams = sum(len(b) for b in st.beams.values())
        return beams == 0 or st.steps >= cfg.max_steps or len(st.completed) >= cfg.width * groups

    def answer(self, tree: TreeState) -> int:
        st, ps = tree.algo, self.forest.path_score
        pool = st.completed or [n for b in st.beams.values() for n in b]
        if not pool:
            return tree.root
        return max(pool, key=lambda n: (float(ps[n]), -n))
