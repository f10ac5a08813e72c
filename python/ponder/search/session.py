"""What every search algorithm shares: one call's trees, scoring, budgets, rounds and results.

A :class:`Session` holds the policy engine, the scorer, the optional verifier and the path
aggregation, plus one :class:`TreeState` per problem. Algorithms subclass it and implement
``round(trees)`` (one batched round over every still-active tree), ``answer(tree)`` and
``root_value(tree)``. ``run`` repeats rounds until every tree has a stop reason, then builds
one :class:`~ponder.search.result.SearchResult` per problem.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from ponder.expansion import SamplingParams, StepStop
from ponder.scoring import Aggregation, Verifier, constant_scores
from ponder.search.budget import Budget, Usage, check


@dataclass
class TreeState:
    index: int  # problem index within the call
    root: int
    budget: Budget
    usage: Usage = field(default_factory=Usage)
    stop_reason: Optional[str] = None
    local_ids: Dict[int, int] = field(default_factory=dict)  # node -> id within the tree
    verified: List[int] = field(default_factory=list)  # nodes a verifier accepted (score 1)
    state: Dict[str, object] = field(default_factory=dict)  # algorithm-specific
    previous_answer: Optional[int] = None  # answer before a resume

    def local_id(self, node: int) -> int:
        return self.local_ids[int(node)]


class Session:
    algorithm = "search"

    def __init__(self, policy, scorer, *, verifier: Optional[Verifier] = None, aggregation: Aggregation = Aggregation(),
                 stop: StepStop = StepStop(), sampling: SamplingParams = SamplingParams(), seed: int = 0,
                 progress: bool = True, constraint: Optional[Callable[[int, str], Optional[Iterable[int]]]] = None,
                 distinct: bool = False):
        if not isinstance(stop, StepStop):
            raise TypeError(f"stop must be a StepStop, got {type(stop).__name__}")
        if not isinstance(sampling, SamplingParams):
            raise TypeError(f"sampling must be a SamplingParams, got {type(sampling).__name__}")
        if verifier is not None and not isinstance(verifier, Verifier):
            raise TypeError(f"verifier must be a ponder.Verifier, got {type(verifier).__name__}")
        if not isinstance(aggregation, Aggregation):
            raise TypeError(f"aggregation must be a ponder.Aggregation, got {type(aggregation).__name__}")
        if constraint is not None and not callable(constraint):
            raise TypeError(f"constraint must be callable (problem index, path text) -> token ids or None, "
                            f"got {type(constraint).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.policy, self.scorer, self.verifier = policy, scorer, verifier
        self.aggregation, self.stop, self.sampling, self.seed = aggregation, stop, sampling, int(seed)
        self.progress = progress
        self.constraint = constraint
        self.distinct = bool(distinct)
        self.trees: List[TreeState] = []
        self._agg: Dict[int, float] = {}  # node -> aggregate of its step scores (no token cost)
        self._gen_tokens: Dict[int, int] = {}  # node -> generated tokens on its path
        self.model_calls_at_start = 0
        self.wall_time = 0.0

    # ------------------------------------------------------------------ setup
    def start(self, prompts: Sequence, budget: Budget) -> None:
        if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__len__"):
            raise TypeError(f"prompts must be a list of prompts, got {type(prompts).__name__}")
        if len(prompts) == 0:
            raise ValueError("prompts is empty: give at least one problem")
        if not isinstance(budget, Budget):
            raise TypeError(f"budget must be a ponder.Budget, got {type(budget).__name__}")
        roots = self.policy.add_prompts(prompts)
        now = time.perf_counter()
        for i, r in enumerate(np.asarray(roots).tolist()):
            t = TreeState(index=i, root=int(r), budget=budget, usage=Usage(started=now))
            t.local_ids[int(r)] = 0
            self._agg[int(r)] = 0.0
            self._gen_tokens[int(r)] = 0
            self.trees.append(t)
        self.model_calls_at_start = self.policy.stats.model_calls

    # ------------------------------------------------------------------ expansion + scoring
    def expand(self, trees: Sequence[TreeState], nodes: Sequence[int], counts: Sequence[int]):
        """Expand ``nodes[i]`` (in ``trees[i]``) into ``counts[i]`` children; score, verify and
        aggregate them; charge each tree. Returns (expansion, step scores float32 [C])."""
        rng_ids = [t.local_id(n) for t, n in zip(trees, nodes)]
        extra = {"distinct": True} if self.distinct else {}
        if self.constraint is not None:
            extra["allowed_tokens"] = self._allowed_tokens(trees, nodes)
        exp = self.policy.expand(list(nodes), list(counts), stop=self.stop, sampling=self.sampling, seed=self.seed,
                                 rng_ids=rng_ids, **extra)
        c = len(exp.children)
        for t, n in zip(trees, nodes):
            t.usage.expansions += 1
        tree_of_parent = {int(n): t for t, n in zip(trees, nodes)}
        for p, k in exp.discarded_tokens.items():  # duplicates dropped by distinct=True were generated too
            tree_of_parent[p].usage.tokens += k
        if c == 0:
            return exp, np.zeros(0, dtype=np.float32)
        scores = self.scorer.score(self.policy, exp) if self.scorer is not None else constant_scores(c)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        if scores.shape != (c,) or not np.isfinite(scores).all():
            raise ValueError(f"scorer returned {scores.shape} scores (finite expected) for {c} children")
        terminal = exp.terminal.copy()
        forest = self.policy.forest
        for i, (p, ch) in enumerate(zip(exp.parents.tolist(), exp.children.tolist())):
            t = tree_of_parent[p]
            t.local_ids[ch] = len(t.local_ids)
            self._gen_tokens[ch] = self._gen_tokens[p] + len(exp.tokens[i])
            if self.verifier is not None:
                verdict = self.verifier.check(t.index, self.text(ch))
                if verdict is not None:
                    terminal[i] = True
                    scores[i] = verdict
                    if verdict >= 1.0:
                        t.verified.append(ch)
        depth = np.asarray(forest.depth)[exp.children]
        parent_agg = np.array([self._agg[p] for p in exp.parents.tolist()])
        agg = self.aggregation.combine(parent_agg, scores, depth)
        gen = np.array([self._gen_tokens[ch] for ch in exp.children.tolist()])
        path = self.aggregation.path_score(agg, gen)
        for ch, a in zip(exp.children.tolist(), agg.tolist()):
            self._agg[ch] = a
        forest.set_rewards(exp.children, scores)
        forest.set_path_scores(exp.children, path.astype(np.float32))
        if (terminal != exp.terminal).any():
            forest.set_terminal(exp.children, terminal)
            # a terminal node is never expanded again: its KV is dead weight
            self.policy.evict_nodes([ch for ch, was, now in zip(exp.children.tolist(), exp.terminal, terminal)
                                     if now and not was])
        exp.terminal = terminal
        for p, toks in zip(exp.parents.tolist(), exp.tokens):
            tree_of_parent[p].usage.tokens += len(toks)
        return exp, scores

    def _allowed_tokens(self, trees: Sequence[TreeState], nodes: Sequence[int]):
        """The engine-level form of ``self.constraint``: (parent node, step tokens) -> allowed ids."""
        index = {int(n): t.index for t, n in zip(trees, nodes)}
        prefix: Dict[int, str] = {}
        tok = self.policy.tokenizer
        if tok is None:
            raise ValueError("constraint needs a policy engine with a tokenizer (it is called with text)")

        def allowed(parent: int, step_tokens: List[int]):
            if parent not in prefix:
                prefix[parent] = self.text(parent)
            return self.constraint(index[parent], prefix[parent] + tok.decode(step_tokens))

        return allowed

    def text(self, node: int) -> str:
        """The generated text of ``node``'s path (everything after the prompt)."""
        forest = self.policy.forest
        tokens = forest.path_tokens(node)
        root_len = int(forest.token_len[int(forest.tree[node])])
        gen = tokens[root_len:].tolist()
        tok = self.policy.tokenizer
        return tok.decode(gen) if tok is not None else " ".join(map(str, gen))

    # ------------------------------------------------------------------ rounds
    def round(self, trees: List[TreeState]) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement round()")

    def answer(self, tree: TreeState) -> int:
        raise NotImplementedError(f"{type(self).__name__} must implement answer()")

    def root_value(self, tree: TreeState) -> Optional[float]:
        return None

    def exhausted(self, tree: TreeState) -> bool:
        """True when the algorithm has nothing left to do for this tree."""
        return False

    def run(self, trees: Optional[List[TreeState]] = None) -> None:
        trees = self.trees if trees is None else trees
        t0 = time.perf_counter()
        bar = tqdm(desc=self.algorithm, unit="round", disable=not self.progress, leave=False)
        try:
            while True:
                active = [t for t in trees if t.stop_reason is None]
                if not active:
                    break
                self.round(active)
                now = time.perf_counter()
                kv = int(self.policy.kv_stats()["kv_bytes_in_use"])
                for t in active:
                    t.usage.iterations += 1
                    t.usage.observe(self.answer(t), self.root_value(t), t.budget.converge_tol)
                    reason = check(t.budget, t.usage, now, kv, bool(t.verified))
                    if reason is None and self.exhausted(t):
                        reason = "exhausted"
                    t.stop_reason = reason
                bar.update(1)
                bar.set_postfix(active=sum(t.stop_reason is None for t in trees),
                                verified=sum(bool(t.verified) for t in trees),
                                tokens=sum(t.usage.tokens for t in trees))
        finally:
            bar.close()
            self.wall_time += time.perf_counter() - t0

    def results(self) -> list:
        from ponder.search.result import build_result

        return [build_result(self, t) for t in self.trees]

    def resume(self, tree: TreeState, budget: Budget):
        """Continue one tree with a fresh budget; see ``SearchResult.resume``."""
        from ponder.search.result import build_result

        if not isinstance(budget, Budget):
            raise TypeError(f"budget must be a ponder.Budget, got {type(budget).__name__}")
        if not self.policy.forest.is_alive(tree.root):
            raise ValueError(f"the tree of problem {tree.index} was released; it cannot be resumed")
        tree.previous_answer = self.best_answer(tree)
        tree.budget = budget
        tree.usage = Usage(started=time.perf_counter())
        tree.stop_reason = None
        self.run([tree])
        return build_result(self, tree)

    def best_answer(self, tree: TreeState) -> int:
        """The algorithm's answer, except that a verified answer beats an unverified one and a
        resumed search never returns a worse answer than before the resume."""
        candidates = [self.answer(tree)]
        if tree.verified:
            candidates.append(max(tree.verified, key=lambda n: (float(self.policy.forest.path_score[n]), -n)))
        if tree.previous_answer is not None:
            candidates.append(tree.previous_answer)
        verified = set(tree.verified)
        ps = self.policy.forest.path_score
        # first by verification, then by path score; ties keep the algorithm's own pick
        return max(enumerate(candidates), key=lambda ic: (ic[1] in verified, float(ps[ic[1]]), -ic[0]))[1]
