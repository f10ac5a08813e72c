"""Monte Carlo tree search over reasoning steps, many trees and many leaves per round.

Each round, for every active tree at once: PUCT selection with virtual loss picks up to
``leaves_per_tree`` leaves (``Forest.select``); the non-terminal ones are expanded into
``num_children`` children in one batched engine call; the children are scored (value head, PRM,
verifier) and each child's score is backed up through its path (so a child starts with one
visit and a real Q); terminal leaves back up their own score again. Priors are the children's
sequence probabilities normalised over siblings, optionally mixed with root Dirichlet noise.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set

import numpy as np

from ponder.forest import BEST_PATH_BY
from ponder.search.session import Session
from ponder.search.state import MAX_FANOUT, Children, Selection, TreeState

FINAL_BY = BEST_PATH_BY  # the answer is the end of Forest.best_path(by=final)


@dataclass(frozen=True)
class MCTSConfig:
    """num_children: children per expanded leaf. leaves_per_tree: leaves selected per tree per
    round (virtual loss spreads them). c_puct: exploration weight. virtual_loss: value charged
    per pending visit. fpu: Q of an unvisited child. pw_k / pw_alpha: progressive widening, a
    node may hold ``pw_k * visits**pw_alpha`` children (pw_k = 0: off). dirichlet_alpha /
    dirichlet_eps: root prior noise (alpha = 0: off). final: how the answer is chosen, by
    ``visits`` / ``value`` along the tree or best ``score`` leaf. discount: per-level factor in
    backup. refill: when a round selects only terminal leaves of a tree, expand the nearest
    ancestor of the first one that can still give new children, for ``num_children`` more
    (meant for ``search(distinct=True)``, where a node's first draws may miss its good steps;
    an ancestor is skipped once its children hold ``refill_coverage`` of the policy's
    probability mass, or once a refill brought no new child; with no such ancestor, the tree's
    open leaf of best path score is expanded instead)."""

    num_children: int = 4
    leaves_per_tree: int = 1
    c_puct: float = 1.0
    virtual_loss: float = 1.0
    fpu: float = 0.0
    pw_k: float = 0.0
    pw_alpha: float = 0.5
    dirichlet_alpha: float = 0.0
    dirichlet_eps: float = 0.25
    final: str = "visits"
    discount: float = 1.0
    refill: bool = False
    refill_coverage: float = 0.99

    def __post_init__(self):
        for name in ("num_children", "leaves_per_tree"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_FANOUT:
                raise ValueError(f"MCTSConfig.{name} must be an int in [1, {MAX_FANOUT}], got {v!r}")
        for name in ("c_puct", "virtual_loss", "fpu", "pw_k", "pw_alpha", "dirichlet_alpha", "dirichlet_eps",
                     "discount", "refill_coverage"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"MCTSConfig.{name} must be a finite number, got {v!r}")
        if self.c_puct < 0 or self.pw_k < 0 or self.dirichlet_alpha < 0:
            raise ValueError("MCTSConfig.c_puct, pw_k and dirichlet_alpha must be >= 0")
        if not 0 <= self.pw_alpha <= 1 or not 0 <= self.dirichlet_eps <= 1:
            raise ValueError("MCTSConfig.pw_alpha and dirichlet_eps must lie in [0, 1]")
        if not 0 < self.discount <= 1:
            raise ValueError(f"MCTSConfig.discount must lie in (0, 1], got {self.discount!r}")
        if not 0 < self.refill_coverage <= 1:
            raise ValueError(f"MCTSConfig.refill_coverage must lie in (0, 1], got {self.refill_coverage!r}")
        if not isinstance(self.refill, bool):
            raise ValueError(f"MCTSConfig.refill must be a bool, got {self.refill!r}")
        if self.final not in FINAL_BY:
            raise ValueError(f"MCTSConfig.final must be one of {FINAL_BY}, got {self.final!r}")


@dataclass
class MCTSState:
    """Per tree: policy mass held by each refilled node's children (``coverage``), nodes a refill
    brought nothing new (``saturated``), and whether a refill found no target (``stuck``)."""

    coverage: Dict[int, float] = field(default_factory=dict)
    saturated: Set[int] = field(default_factory=set)
    stuck: bool = False


@dataclass
class MCTSSelection(Selection):
    leaves: List[int] = field(default_factory=list)  # selected (pending) leaves being expanded
    refills: List[int] = field(default_factory=list)  # ancestors widened by refill
    first_roots: List[int] = field(default_factory=list)  # roots expanded for the first time


class MCTS(Session):
    algorithm = "mcts"

    def __init__(self, policy, scorer, config: MCTSConfig, **kwargs):
        super().__init__(policy, scorer, **kwargs)
        if not isinstance(config, MCTSConfig):
            raise TypeError(f"config must be an MCTSConfig, got {type(config).__name__}")
        self.config = config

    def new_state(self, tree: TreeState) -> MCTSState:
        return MCTSState()

    def select(self, trees: List[TreeState]) -> MCTSSelection:
        """PUCT leaves of every tree; terminal leaves back up their own score at once."""
        cfg, forest = self.config, self.forest
        rows = forest.select([t.root for t in trees], cfg.leaves_per_tree, cfg.c_puct, cfg.virtual_loss, cfg.fpu,
                             cfg.pw_k, cfg.pw_alpha)
        sel, terminal_leaves, refill_trees = MCTSSelection(), [], []
        for t, row in zip(trees, rows):
            picked = [leaf for leaf in row.tolist() if leaf >= 0]
            for leaf in picked:
                if forest.terminal[leaf]:
                    terminal_leaves.append(leaf)
                else:
                    sel.add(t, leaf, cfg.num_children)
                    sel.leaves.append(leaf)
                    if leaf == t.root and forest.num_children[leaf] == 0:
                        sel.first_roots.append(leaf)
            if cfg.refill and picked and all(forest.terminal[leaf] for leaf in picked):
                node = self._refill_target(t, picked[0])
                if node is not None:
                    refill_trees.append((t, node))
                else:
                    t.algo.stuck = True
        for t, node in refill_trees:  # after the tree's own leaves, as selection order demands
            sel.add(t, node, cfg.num_children)
            sel.refills.append(node)
        if terminal_leaves:
            forest.backup(terminal_leaves, np.asarray(forest.reward)[terminal_leaves], cfg.discount)
        return sel

    def update(self, sel: MCTSSelection, kids: Children) -> None:
        """Back up each child's score through its path; release the leaves' virtual loss."""
        if not sel.nodes:
            return
        cfg, forest = self.config, self.forest
        if cfg.dirichlet_alpha > 0 and sel.first_roots:
            self._add_root_noise(kids, sel.first_roots)
        forest.backup(kids.nodes, kids.scores, cfg.discount)
        forest.cancel(sel.leaves)
        if cfg.refill:
            # policy mass held by each parent's children (distinct children: no double counting)
            for t, p, lp in zip(kids.trees, kids.parents.tolist(), kids.logprob.tolist()):
                t.algo.coverage[p] = t.algo.coverage.get(p, 0.0) + math.exp(lp)
        got = set(kids.parents.tolist())
        tree_of = dict(zip(sel.nodes, sel.trees))
        for node in sel.refills:
            if node not in got:
                tree_of[node].algo.saturated.add(node)

    def _refill_target(self, tree: TreeState, leaf: int) -> Optional[int]:
        """The nearest proper ancestor of ``leaf`` that is not terminal, not saturated and whose
        children hold less than ``refill_coverage`` of the policy's mass."""
        forest, st = self.forest, tree.algo
        node = int(forest.parent[leaf])
        while node >= 0 and (node in st.saturated or forest.terminal[node]
                             or st.coverage.get(node, 0.0) >= self.config.refill_coverage):
            node = int(forest.parent[node])
        if node >= 0:
            return node
        # nothing above the leaf can widen: expand the tree's most promising open leaf instead
        open_leaves = forest.frontier([tree.root])
        if open_leaves.size == 0:
            return None
        ps = np.asarray(forest.path_score)[open_leaves]
        return int(open_leaves[int(np.argmax(ps))])

    def _add_root_noise(self, kids: Children, roots) -> None:
        cfg, forest = self.config, self.forest
        for r in roots:
            children = kids.nodes[kids.parents == r]
            # Seeded by the search seed and the prompt's tokens, never by the batch position: a
            # problem gets the same noise alone or in a batch.
            prompt = np.ascontiguousarray(forest.node_tokens(r), dtype=np.int32)
            rng = np.random.default_rng([self.seed, zlib.crc32(prompt.tobytes()), len(children)])
            noise = rng.dirichlet([cfg.dirichlet_alpha] * len(children))
            prior = np.asarray(forest.prior)[children]
            mixed = (1 - cfg.dirichlet_eps) * prior + cfg.dirichlet_eps * noise
            forest.set_priors(children, mixed.astype(np.float32))

    def answer(self, tree: TreeState) -> int:
        return int(self.forest.best_path(tree.root, by=self.config.final)[-1])

    def root_value(self, tree: TreeState) -> Optional[float]:
        n = int(self.forest.visits[tree.root])
        return float(self.forest.value_sum[tree.root]) / n if n else None

    def exhausted(self, tree: TreeState) -> bool:
        if self.config.pw_k != 0 or self.forest.frontier([tree.root]).size > 0:
            return False
        return not self.config.refill or tree.algo.stuck
