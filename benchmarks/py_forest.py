"""A straightforward plain-Python search forest: the baseline of benchmarks/bench_forest.py.

One object per node, children in a Python list. It implements the same select (PUCT + virtual
loss, stop at an already pending leaf), add_children and backup / cancel semantics as
ponder.forest.Forest, with the same arithmetic in the same order, so both build identical trees
from the same priors and values. Node ids are assigned in creation order, as in ponder.
"""

from __future__ import annotations

import math
from typing import List, Sequence

NO_NODE = -1


class Node:
    __slots__ = ("id", "parent", "children", "visits", "value_sum", "virtual_loss", "prior", "pending")

    def __init__(self, node_id, parent, prior):
        self.id = node_id
        self.parent = parent
        self.children: List[Node] = []
        self.visits = 0
        self.value_sum = 0.0
        self.virtual_loss = 0
        self.prior = prior
        self.pending = False


class PyForest:
    def __init__(self):
        self.nodes: List[Node] = []

    def _new(self, parent, prior) -> int:
        node = Node(len(self.nodes), parent, prior)
        self.nodes.append(node)
        if parent is not None:
            parent.children.append(node)
        return node.id

    def add_roots(self, count: int) -> List[int]:
        return [self._new(None, 1.0) for _ in range(count)]

    def add_children(self, parents: Sequence[int], counts: Sequence[int], priors: Sequence[float]) -> List[int]:
        out, j = [], 0
        for p, c in zip(parents, counts):
            for _ in range(c):
                out.append(self._new(self.nodes[p], priors[j]))
                j += 1
        return out

    def select(self, roots: Sequence[int], k: int, c_puct: float, vl_value: float, fpu: float) -> List[List[int]]:
        out = []
        for r in roots:
            row = []
            for _ in range(k):
                node = self.nodes[r]
                while node.children:
                    sqrt_parent = math.sqrt(max(node.visits + node.virtual_loss, 1))
                    best, best_score = None, 0.0
                    for child in node.children:
                        n_eff = child.visits + child.virtual_loss
                        q = (child.value_sum - vl_value * child.virtual_loss) / n_eff if n_eff > 0 else fpu
                        score = q + c_puct * child.prior * sqrt_parent / (1 + n_eff)
                        if best is None or score > best_score:
                            best, best_score = child, score
                    node = best
                if node.pending:
                    break
                node.pending = True
                a = node
                while a is not None:
                    a.virtual_loss += 1
                    a = a.parent
                row.append(node.id)
            out.append(row + [NO_NODE] * (k - len(row)))
        return out

    def backup(self, nodes: Sequence[int], values: Sequence[float], discount: float = 1.0) -> None:
        for n, v in zip(nodes, values):
            node = self.nodes[n]
            was_pending = node.pending
            node.pending = False
            while node is not None:
                node.visits += 1
                node.value_sum += v
                if was_pending:
                    node.virtual_loss -= 1
                v *= discount
                node = node.parent

    def cancel(self, nodes: Sequence[int]) -> None:
        for n in nodes:
            node = self.nodes[n]
            if node.pending:
                node.pending = False
                while node is not None:
                    node.virtual_loss -= 1
                    node = node.parent

    def visits(self) -> List[int]:
        return [n.visits for n in self.nodes]

    def parents(self) -> List[int]:
        return [NO_NODE if n.parent is None else n.parent.id for n in self.nodes]

    def value_sums(self) -> List[float]:
        return [n.value_sum for n in self.nodes]
