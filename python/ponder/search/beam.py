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

from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from ponder.search.session import Session, TreeState


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


class BeamSearch(Session):
    algorithm = "beam_search"

    def __init__(self, policy, scorer, config: BeamConfig, **kwargs):
        super().__init__(policy, scorer, **kwargs)
        if not isinstance(config, BeamConfig):
            raise TypeError(f"config must be a BeamConfig, got {type(config).__name__}")
        self.config = config

    def _st(self, tree: TreeState) -> Dict:
        if not tree.state:
            # beams: {group: [nodes]}; group 0 until DVTS splits the root into subtrees
            tree.state.update(beams={0: [tree.root]}, completed=[], steps=0)
        return tree.state

    def round(self, trees: List[TreeState]) -> None:
        cfg, forest = self.config, self.policy.forest
        exp_trees, exp_nodes, counts, group_of = [], [], [], {}
        for t in trees:
            st = self._st(t)
            for g, beams in st["beams"].items():
                for b in beams:
                    first = b == t.root
                    k = (cfg.num_subtrees or cfg.width) * cfg.expansion if first else cfg.expansion
                    exp_trees.append(t)
                    exp_nodes.append(b)
                    counts.append(k)
                    group_of[b] = g
        if not exp_nodes:
            return
        exp, _ = self.expand(exp_trees, exp_nodes, counts)
        tree_of = {n: t for t, n in zip(exp_trees, exp_nodes)}
        by_tree: Dict[int, Dict[int, List[int]]] = {}
        seen: Dict[int, int] = {}  # children of each parent met so far in this call
        for i, (p, ch) in enumerate(zip(exp.parents.tolist(), exp.children.tolist())):
            t = tree_of[p]
            j = seen.get(p, 0)
            seen[p] = j + 1
            # DVTS: the root's children come in num_subtrees blocks of `expansion`, one per subtree
            g = j // cfg.expansion if (p == t.root and cfg.num_subtrees) else group_of[p]
            if exp.terminal[i]:
                self._st(t)["completed"].append(ch)
            else:
                by_tree.setdefault(t.root, {}).setdefault(g, []).append(ch)
        ps = np.asarray(forest.path_score)
        to_evict = list(exp_nodes)
        for t in trees:
            st = self._st(t)
            st["steps"] += 1
            new_beams = {}
            for g, cands in by_tree.get(t.root, {}).items():
                order = sorted(cands, key=lambda n: (-float(ps[n]), n))
                new_beams[g] = order[: cfg.width]
                to_evict.extend(order[cfg.width:])
            st["beams"] = new_beams
        self.policy.evict_nodes(to_evict)

    def exhausted(self, tree: TreeState) -> bool:
        st, cfg = self._st(tree), self.config
        groups = max(1, cfg.num_subtrees)
        beams = sum(len(b) for b in st["beams"].values())
        return beams == 0 or st["steps"] >= cfg.max_steps or len(st["completed"]) >= cfg.width * groups

    def answer(self, tree: TreeState) -> int:
        st = self._st(tree)
        ps = self.policy.forest.path_score
        pool = st["completed"] or [n for b in st["beams"].values() for n in b]
        if not pool:
            return tree.root
        return max(pool, key=lambda n: (float(ps[n]), -n))
