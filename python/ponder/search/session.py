"""What every search algorithm shares: the Forest, the round, scoring, eviction, budgets, results.

A :class:`Session` owns one :class:`~ponder.Forest` holding a tree per problem; each node keeps
the policy engine's sequence handle of its KV in ``Forest.page_seq``. Every round of every
algorithm is the same five moves (:meth:`Session.round`)::

    sel  = self.select(trees)                          # algorithm: PUCT leaves / beams / open chains
    exp  = policy.expand(handles of sel.nodes, ...)    # engine: fork, batched decode, step ends
    kids = self.score(sel, exp)                        # scorer + verifier + path aggregation
    self.add_children(sel, exp, kids)                  # one Forest.add_children call
    self.update(sel, kids)                             # algorithm: backup / keep the best / finish

Algorithms subclass it with their ``select`` / ``update`` rules, ``answer``, ``root_value`` and
``exhausted``, and a typed per-tree state (``new_state``). The session also decides which KV
the engine may evict under memory pressure (unexpanded leaves before expanded nodes, lowest path
score first) and frees KV that no longer serves the search (terminal nodes, pruned beams).
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, List, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from ponder.expansion import Expansion, SamplingParams, StepStop
from ponder.forest import Forest
from ponder.scoring import Aggregation, Verifier, constant_scores
from ponder.search.budget import Budget, Usage, check
from ponder.search.state import Children, NodeData, Selection, TreeState

ConstraintFn = Callable[[int, str], Optional[Iterable[int]]]


class Session:
    algorithm = "search"

    def __init__(self, policy, scorer, *, verifier: Optional[Verifier] = None, aggregation: Aggregation = Aggregation(),
                 stop: StepStop = StepStop(), sampling: SamplingParams = SamplingParams(), seed: int = 0,
                 progress: bool = True, constraint: Optional[ConstraintFn] = None, distinct: bool = False):
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
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
        self.policy, self.scorer, self.verifier = policy, scorer, verifier
        self.aggregation, self.stop, self.sampling, self.seed = aggregation, stop, sampling, int(seed)
        self.progress = progress
        self.constraint = constraint
        self.distinct = bool(distinct)
        self.forest = Forest()
        self.node_data = NodeData()
        self.trees: List[TreeState] = []
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
        self.model_calls_at_start = self.policy.stats.model_calls
        handles = np.asarray(self.policy.prefill(prompts, evict=self.evict_order))
        tokens = [np.asarray(self.policy.tokens(int(h)), dtype=np.int32) for h in handles]
        indptr = np.zeros(len(tokens) + 1, dtype=np.int64)
        np.cumsum([t.size for t in tokens], out=indptr[1:])
        roots = self.forest.add_roots(np.concatenate(tokens), indptr)
        self.forest.set_page_seqs(roots, handles.astype(np.int32))
        self.node_data.reserve(self.forest.num_nodes)
        now = time.perf_counter()
        for i, r in enumerate(roots.tolist()):
            t = TreeState(index=i, root=int(r), budget=budget, usage=Usage(started=now))
            t.algo = self.new_state(t)
            self.trees.append(t)

    # ------------------------------------------------------------------ the round
    def round(self, trees: List[TreeState]) -> None:
        """One batched round over every active tree: select -> expand -> score -> add -> update."""
        sel = self.select(trees)
        kids = Children.empty()
        if sel.nodes:
            try:
                exp = self.policy.expand(
                    self.handles(sel.nodes), sel.counts, stop=self.stop, sampling=self.sampling, seed=self.seed,
                    rng_ids=self.node_data.local_id[sel.nodes], allowed_tokens=self._allowed_tokens(sel),
                    distinct=self.distinct, evict=self.evict_order)
            except BaseException:
                self.forest.cancel(sel.nodes)  # selected leaves stop being pending
                raise
            kids = self.score(sel, exp)
            self.add_children(sel, exp, kids)
        self.update(sel, kids)

    def score(self, sel: Selection, exp: Expansion) -> Children:
        """Step scores of the new children (scorer, then verifier verdicts), charged to each tree."""
        for t in sel.trees:
            t.usage.expansions += 1
        if exp.discarded_tokens:  # duplicates dropped by distinct=True were generated too
            tree_of = dict(zip(self.handles(sel.nodes).tolist(), sel.trees))
            for h, k in exp.discarded_tokens.items():
                tree_of[h].usage.tokens += k
        trees = [sel.trees[i] for i in exp.parent_index.tolist()]
        parents = np.asarray(sel.nodes, dtype=np.int32)[exp.parent_index]
        c = len(exp.children)
        for t, toks in zip(trees, exp.tokens):
            t.usage.tokens += len(toks)
        scores = self.scorer.score(self.policy, exp) if self.scorer is not None and c else constant_scores(c)
        scores = np.array(scores, dtype=np.float32).reshape(-1)
        if scores.shape != (c,) or not np.isfinite(scores).all():
            raise ValueError(f"scorer returned {scores.shape} scores (finite expected) for {c} children")
        terminal, verified = exp.terminal.copy(), np.zeros(c, dtype=bool)
        if self.verifier is not None:
            for i, (t, p, toks) in enumerate(zip(trees, parents.tolist(), exp.tokens)):
                verdict = self.verifier.check(t.index, self.text(p, toks))
                if verdict is not None:
                    terminal[i], scores[i], verified[i] = True, verdict, verdict >= 1.0
        logprob = np.array([float(np.sum(lp, dtype=np.float64)) for lp in exp.logprobs], dtype=np.float64)
        return Children(np.zeros(c, np.int32), parents, trees, scores, terminal, verified, logprob)

    def add_children(self, sel: Selection, exp: Expansion, kids: Children) -> None:
        """Add the scored children with one ``Forest.add_children`` call (priors, rewards, path
        scores, terminal flags, sequence handles) and free the KV of the terminal ones."""
        c = len(exp.children)
        if c == 0:
            return
        f, nd = self.forest, self.node_data
        depth = np.asarray(f.depth)[kids.parents] + 1
        agg = self.aggregation.combine(nd.agg[kids.parents], kids.scores, depth)
        gen = nd.gen_tokens[kids.parents] + np.array([t.size for t in exp.tokens], dtype=np.int64)
        path = self.aggregation.path_score(agg, gen).astype(np.float32)
        first = np.r_[True, exp.parent_index[1:] != exp.parent_index[:-1]]
        groups = np.nonzero(first)[0]
        indptr = np.zeros(c + 1, dtype=np.int64)
        np.cumsum([t.size for t in exp.tokens], out=indptr[1:])
        kids.nodes = f.add_children(kids.parents[groups], np.diff(np.r_[groups, c]).astype(np.int32), exp.priors,
                                    np.concatenate(exp.tokens), indptr, rewards=kids.scores, terminal=kids.terminal,
                                    path_scores=path, page_seqs=exp.children.astype(np.int32))
        nd.reserve(f.num_nodes)
        nd.agg[kids.nodes], nd.gen_tokens[kids.nodes] = agg, gen
        for node, t, ok in zip(kids.nodes.tolist(), kids.trees, kids.verified.tolist()):
            nd.local_id[node] = t.num_nodes
            t.num_nodes += 1
            if ok:
                t.verified.append(node)
        self.evict(kids.nodes[kids.terminal])  # a terminal node is never expanded: its KV is dead weight

    # ------------------------------------------------------------------ per-algorithm rules
    def new_state(self, tree: TreeState):
        return None

    def select(self, trees: List[TreeState]) -> Selection:
        raise NotImplementedError(f"{type(self).__name__} must implement select()")

    def update(self, sel: Selection, kids: Children) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement update()")

    def answer(self, tree: TreeState) -> int:
        raise NotImplementedError(f"{type(self).__name__} must implement answer()")

    def root_value(self, tree: TreeState) -> Optional[float]:
        return None

    def exhausted(self, tree: TreeState) -> bool:
        """True when the algorithm has nothing left to do for this tree."""
        return False

    # ------------------------------------------------------------------ nodes, text, KV
    def handles(self, nodes) -> np.ndarray:
        """int64: the policy sequence handle of each node."""
        return np.asarray(self.forest.page_seq)[np.asarray(nodes, dtype=np.int64)].astype(np.int64)

    def text(self, node: int, step_tokens=None) -> str:
        """The generated text of ``node``'s path (everything after the prompt), followed by
        ``step_tokens`` when given (a child not yet in the forest)."""
        f = self.forest
        tokens = f.path_tokens(node)[int(f.token_len[int(f.tree[node])]):]
        if step_tokens is not None:
            tokens = np.concatenate([tokens, np.asarray(step_tokens, dtype=np.int32)])
        tok = self.policy.tokenizer
        gen = tokens.tolist()
        return tok.decode(gen) if tok is not None else " ".join(map(str, gen))

    def evict(self, nodes) -> None:
        """Drop the KV of ``nodes`` (policy and mirrored scorer); they stay in the tree."""
        handles = self.handles(nodes)
        if handles.size:
            self.policy.evict(handles)
            if hasattr(self.scorer, "evict"):
                self.scorer.evict(handles)

    def evict_order(self, engine, pages_needed: int) -> List[int]:
        """The session's eviction ranking for the engine: live nodes holding KV, unexpanded
        leaves before expanded nodes, lowest path score first, then creation order."""
        f = self.forest
        cand = np.nonzero(np.asarray(f.alive).astype(bool))[0]
        if cand.size == 0:
            return []
        cand = cand[engine.has_kv(self.handles(cand))]
        expanded = np.asarray(f.num_children)[cand] > 0
        order = np.lexsort((cand, np.asarray(f.path_score)[cand], expanded))
        return self.handles(cand[order]).tolist()

    def release(self, tree: TreeState) -> None:
        """Free every node of ``tree`` and their KV (policy and scorer); it cannot resume after."""
        if not self.forest.is_alive(tree.root):
            return
        handles = np.asarray(self.forest.release(tree.root), dtype=np.int64)
        self.policy.free(handles)
        if hasattr(self.scorer, "free"):
            self.scorer.free(handles)

    def _allowed_tokens(self, sel: Selection):
        """The engine-level form of ``self.constraint``: (parent handle, step tokens) -> ids."""
        if self.constraint is None:
            return None
        tok = self.policy.tokenizer
        if tok is None:
            raise ValueError("constraint needs a policy engine with a tokenizer (it is called with text)")
        node_of = dict(zip(self.handles(sel.nodes).tolist(), zip(sel.nodes, sel.trees)))
        prefix = {}

        def allowed(parent: int, step_tokens: List[int]):
            node, tree = node_of[parent]
            if parent not in prefix:
                prefix[parent] = self.text(node)
            return self.constraint(tree.index, prefix[parent] + tok.decode(step_tokens))

        return allowed

    # ------------------------------------------------------------------ run, results, resume
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
        if not self.forest.is_alive(tree.root):
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
        ps = self.forest.path_score
        candidates = [self.answer(tree)]
        if tree.verified:
            candidates.append(max(tree.verified, key=lambda n: (float(ps[n]), -n)))
        if tree.previous_answer is not None:
            candidates.append(tree.previous_answer)
        verified = set(tree.verified)
        # first by verification, then by path score; ties keep the algorithm's own pick
        return max(enumerate(candidates), key=lambda ic: (ic[1] in verified, float(ps[ic[1]]), -ic[0]))[1]
