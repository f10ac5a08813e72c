"""Search results: the answer, the tree, statistics, exports and training data."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from ponder.search import result_json

NODE_FIELDS = ("parent", "visits", "value_sum", "prior", "reward", "path_score", "terminal", "depth")


@dataclass
class SearchResult:
    """One problem's search outcome.

    answer: the generated text of the chosen path (after the prompt).
    answer_tokens: its token ids. verified: a verifier accepted the answer. score: its path score.
    path: node indices (into ``nodes``) from the root to the answer.
    nodes: per-node arrays of this problem's tree, indexed 0..n-1 (index 0 is the root):
        ``parent`` (int, -1 for the root), ``tokens`` (list of int lists: each node's own
        tokens), ``text`` (each node's own text), ``visits``, ``value`` (mean backed-up value, 0
        when unvisited), ``reward`` (the step score), ``path_score``, ``terminal``, ``depth``,
        ``prior``.
    stats: tokens_generated, tokens_prefilled, expansions, iterations, model_calls, wall_time,
        peak_kv_bytes, prefix_hit_rate, stop_reason (engine-wide figures are shared by all the
        problems searched in the same call).
    error: why this problem's search failed (stop_reason ``"error"``: a verifier, scorer or
        constraint raised or returned garbage for it), else None; the tree searched so far is kept.
    """

    algorithm: str
    problem_index: int
    answer: str
    answer_tokens: List[int]
    verified: bool
    score: float
    stop_reason: str
    path: List[int]
    nodes: Dict[str, list]
    stats: Dict[str, float]
    error: Optional[str] = None
    _session: object = field(default=None, repr=False, compare=False)
    _tree: object = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ anytime search
    def release(self) -> None:
        """Free this problem's tree and its KV in the engine (and in a mirrored scorer's engine);
        the result itself stays readable, but it can no longer be resumed."""
        if self._session is not None:
            self._session.release(self._tree)
            self._session = self._tree = None

    def resume(self, budget) -> "SearchResult":
        """Continue this problem's search with a fresh ``budget`` (counted from now), keeping its
        tree and KV (evicted KV is re-prefilled transparently). The returned answer is never worse
        than this one: verified beats unverified, then the higher path score wins."""
        if self._session is None:
            raise ValueError("this result was loaded from JSON or detached: only a live search can be resumed")
        return self._session.resume(self._tree, budget)

    # ------------------------------------------------------------------ JSON
    def to_json(self, indent: Optional[int] = None) -> str:
        """This result as JSON (without the live search: a result read back cannot be resumed).
        The text carries ``format_version``; see :mod:`ponder.search.result_json`."""
        fields = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        return json.dumps(result_json.encode(fields), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "SearchResult":
        """A result from :meth:`to_json`'s text. Raises ``ValueError`` naming the first problem
        when the text is not valid JSON, has a missing or unknown ``format_version``, a missing
        or mistyped field, or an inconsistent tree (see :func:`ponder.search.result_json.decode`)."""
        return cls(**result_json.decode(text))

    # ------------------------------------------------------------------ Graphviz
    def to_dot(self, max_label: int = 40) -> str:
        """The tree as a Graphviz DOT digraph; the answer path is drawn bold."""
        on_path = set(self.path)
        lines = ["digraph search {", '  node [shape=box, fontname="monospace", fontsize=10];']
        for i, parent in enumerate(self.nodes["parent"]):
            text = self.nodes["text"][i].replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            if len(text) > max_label:
                text = text[: max_label - 3] + "..."
            label = (f"{text}\\nN={self.nodes['visits'][i]} Q={self.nodes['value'][i]:.3f} "
                     f"r={self.nodes['reward'][i]:.3f} s={self.nodes['path_score'][i]:.3f}")
            style = ', style="bold,filled", fillcolor="#ddeeff"' if i in on_path else ""
            shape = ", peripheries=2" if self.nodes["terminal"][i] else ""
            lines.append(f'  n{i} [label="{label}"{style}{shape}];')
            if parent >= 0:
                bold = ' [style=bold]' if (i in on_path and parent in on_path) else ""
                lines.append(f"  n{parent} -> n{i}{bold};")
        lines.append("}")
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ learning
    def training_examples(self) -> Dict[str, list]:
        """Data for the learning half of search: from this tree,

        - ``policy``: per expanded node with visited children, the prefix text, the children's
          step texts and the visit-count distribution over them (MCTS policy targets);
        - ``values``: per visited non-root node, the prefix + step text and its mean value (Q);
        - ``preferences``: per node with at least two scored children, (prefix, chosen step,
          rejected step) pairs of the best child by value (or reward when unvisited) against each
          worse sibling.
        """
        n = len(self.nodes["parent"])
        children: Dict[int, List[int]] = {}
        for i in range(1, n):
            children.setdefault(self.nodes["parent"][i], []).append(i)
        prefix = [""] * n
        for i in range(1, n):  # parents always precede their children
            p = self.nodes["parent"][i]
            prefix[i] = prefix[p] + self.nodes["text"][p]  # the root's text is the prompt
        visits, value, reward = self.nodes["visits"], self.nodes["value"], self.nodes["reward"]
        policy, values, prefs = [], [], []
        for node, kids in children.items():
            ctx = prefix[node] + self.nodes["text"][node]
            total = sum(visits[k] for k in kids)
            if total > 0:
                policy.append({"prefix": ctx, "steps": [self.nodes["text"][k] for k in kids],
                               "target": [visits[k] / total for k in kids]})
            if len(kids) >= 2:
                key = [value[k] if visits[k] > 0 else reward[k] for k in kids]
                best = int(np.argmax(key))
                for j, k in enumerate(kids):
                    if key[j] < key[best]:
                        prefs.append({"prefix": ctx, "chosen": self.nodes["text"][kids[best]],
                                      "rejected": self.nodes["text"][k], "margin": key[best] - key[j]})
        for i in range(1, n):
            if visits[i] > 0:
                values.append({"prefix": prefix[i], "step": self.nodes["text"][i], "value": value[i],
                               "visits": visits[i]})
        return {"policy": policy, "values": values, "preferences": prefs}


def build_result(session, tree) -> SearchResult:
    """Snapshot one tree of a live session into a SearchResult."""
    policy, forest = session.policy, session.forest
    answer = session.best_answer(tree)
    arrays = forest.arrays()
    # creation order (node id order within a tree) puts parents first; released nodes are gone
    ids = np.nonzero((arrays["tree"] == tree.root) & arrays["alive"].astype(bool))[0].tolist()
    index = {node: i for i, node in enumerate(ids)}
    tok = policy.tokenizer

    def text_of(tokens):
        return tok.decode(tokens) if tok is not None else " ".join(map(str, tokens))

    node_tokens = [forest.node_tokens(n).tolist() for n in ids]
    visits = [int(arrays["visits"][n]) for n in ids]
    nodes = {
        "parent": [index.get(int(arrays["parent"][n]), -1) if n != tree.root else -1 for n in ids],
        "tokens": node_tokens,
        "text": [text_of(t) for t in node_tokens],
        "visits": visits,
        "value": [float(arrays["value_sum"][n]) / v if v else 0.0 for n, v in zip(ids, visits)],
        "reward": [float(arrays["reward"][n]) for n in ids],
        "path_score": [float(arrays["path_score"][n]) for n in ids],
        "terminal": [bool(arrays["terminal"][n]) for n in ids],
        "depth": [int(arrays["depth"][n]) for n in ids],
        "prior": [float(arrays["prior"][n]) for n in ids],
    }
    path, n = [], answer
    while n != tree.root:
        path.append(index[n])
        n = int(arrays["parent"][n])
    path.append(0)
    path.reverse()
    answer_tokens = [t for i in path[1:] for t in node_tokens[i]]
    kv = policy.kv_stats()
    queries = kv.get("prefix_queries", 0)
    stats = {
        "tokens_generated": tree.usage.tokens,
        "tokens_prefilled": int(kv["tokens_prefilled"]),
        "expansions": tree.usage.expansions,
        "iterations": tree.usage.iterations,
        "model_calls": int(policy.stats.model_calls - session.model_calls_at_start),
        "wall_time": float(session.wall_time),
        "peak_kv_bytes": int(kv["kv_bytes_peak"]),
        "prefix_hit_rate": float(kv.get("prefix_hits", 0)) / queries if queries else 0.0,
        "stop_reason": tree.stop_reason,
    }
    return SearchResult(algorithm=session.algorithm, problem_index=tree.index, answer=text_of(answer_tokens),
                        answer_tokens=answer_tokens, verified=answer in set(tree.verified),
                        score=float(arrays["path_score"][answer]), stop_reason=str(tree.stop_reason), path=path,
                        nodes=nodes, stats=stats, error=tree.error, _session=session, _tree=tree)
