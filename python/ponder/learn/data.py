"""Training data from search trees.

:func:`tree_examples` turns one finished search (a :class:`~ponder.SearchResult`) into
:class:`~ponder.tasks.traces.Example` s, the sequences the supervised recipe trains on, with
two kinds of supervision:

* policy: every path that ends in a verified answer, token for token as the search wrote it,
  then ``<eos>``. Each step's tokens carry the step's visit share among its siblings (MCTS
  visit-count targets: a step the search kept returning to weighs more than one it tried once);
  the ``<eos>`` carries the last step's weight.
* value: every visited node, labelled ``outcome_weight * outcome + (1 - outcome_weight) * Q``
  at the last token of its step. ``outcome`` is trajectory-level credit: 1 when the node lies
  on a path to a verified answer (one lies in its subtree), else 0; ``Q`` is its backed-up mean
  value. Labels are soft; the loss is a soft-label BCE.

Example: root ``r`` (4 visits) with children ``a`` (3 visits) and ``b`` (1 visit), ``a``'s child
``c`` verified: one policy example ``prompt a c <eos>`` with weights 3/4 on ``a``'s tokens and
1/1 on ``c``'s and ``<eos>``; value labels at the ends of ``r``, ``a``, ``c`` (outcome 1) and
``b`` (outcome 0), each mixed with its own Q.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence

from ponder.tasks.traces import Example


def _children(parents: Sequence[int]) -> Dict[int, List[int]]:
    kids: Dict[int, List[int]] = {}
    for i, p in enumerate(parents):
        if p >= 0:
            kids.setdefault(p, []).append(i)
    return kids


def _path(parents: Sequence[int], node: int) -> List[int]:
    out = [node]
    while parents[out[-1]] >= 0:
        out.append(parents[out[-1]])
    return out[::-1]


def tree_examples(result, solved: Callable[[str], bool], eos_token_id: int,
                  outcome_weight: float = 0.5) -> Dict[str, List[Example]]:
    """Policy and value examples of one search tree.

    ``result``: a :class:`~ponder.SearchResult` (its ``nodes`` arrays; node 0 is the root, whose
    tokens are the prompt as the engine saw it). ``solved(text)``: whether a path's generated
    text solves the problem (the task's checker; the verifier's verdicts are not trusted blindly,
    so a step the value head happened to score 1.0 never counts as a solution).
    ``outcome_weight`` in [0, 1]: the share of the trajectory outcome in the value labels.
    Returns ``{"policy": [...], "value": [...]}``.
    """
    if not 0.0 <= outcome_weight <= 1.0:
        raise ValueError(f"outcome_weight must lie in [0, 1], got {outcome_weight!r}")
    nodes = result.nodes
    parents, tokens, texts = nodes["parent"], nodes["tokens"], nodes["text"]
    visits, value = nodes["visits"], nodes["value"]
    kids = _children(parents)
    n = len(parents)
    text_of = [""] * n  # generated text of each node's path
    for i in range(1, n):  # parents precede their children
        text_of[i] = text_of[parents[i]] + texts[i]
    verified = [i for i in range(1, n) if nodes["terminal"][i] and solved(text_of[i])]
    on_solution = [False] * n
    for v in verified:
        for i in _path(parents, v):
            on_solution[i] = True

    def share(i: int) -> float:
        total = sum(visits[k] for k in kids[parents[i]])
        return visits[i] / total if total else 1.0 / len(kids[parents[i]])

    policy = []
    for v in verified:
        path = _path(parents, v)
        ids = list(tokens[0])
        spans = []
        for i in path[1:]:
            start = len(ids) - 1  # the position that predicts the step's first token
            ids += tokens[i]
            spans.append((start, len(ids) - 1, share(i)))
        if ids[-1] != eos_token_id:
            ids.append(eos_token_id)
            spans.append((len(ids) - 2, len(ids) - 1, spans[-1][2]))
        policy.append(Example(tuple(ids), tuple(spans), (), (), "search-policy"))

    labelled = [False] * n
    values = []
    # one sequence per visited node with no visited child: the labels of its whole path
    for leaf in range(n):
        if visits[leaf] == 0 or any(visits[k] > 0 for k in kids.get(leaf, ())):
            continue
        ids, positions, labels = [], [], []
        for i in _path(parents, leaf):
            ids += tokens[i]
            if not labelled[i] and visits[i] > 0:
                labelled[i] = True
                positions.append(len(ids) - 1)
                labels.append(outcome_weight * float(on_solution[i]) + (1.0 - outcome_weight) * float(value[i]))
        if positions:
            values.append(Example(tuple(ids), (), tuple(positions), tuple(labels), "search-value"))
    return {"policy": policy, "value": values}


def example_to_json(ex: Example) -> dict:
    return {"ids": list(ex.ids), "spans": [list(s) for s in ex.target_spans], "positions": list(ex.value_positions),
            "labels": list(ex.value_labels), "kind": ex.kind}


def example_from_json(d: dict) -> Example:
    return Example(tuple(int(x) for x in d["ids"]), tuple((int(a), int(b), float(w)) for a, b, w in d["spans"]),
                   tuple(int(x) for x in d["positions"]), tuple(float(x) for x in d["labels"]), str(d["kind"]))
