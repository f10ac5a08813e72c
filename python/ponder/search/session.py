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

from ponder.decoding import StepConstraint
from ponder.expansion import Expansion, SamplingParams, StepStop
from ponder.forest import Forest
from ponder.scoring import Aggregation, Verifier
from ponder.search.budget import STOP_REASONS, Budget, Usage, check
from ponder.search.callbacks import Callbacks
from ponder.search.state import Children, NodeData, ProblemFailure, Selection, TreeState

ConstraintFn = Callable[[int, str], Optional[Iterable[int]]]
# "isolate": a callback failing for one problem fails that problem only; "raise": fail fast
ON_ERROR = ("isolate", "raise")


class Session(Callbacks):
    algorithm = "search"

    def __init__(self, policy, scorer, *, verifier: Optional[Verifier] = None, aggregation: Aggregation = Aggregation(),
                 stop: StepStop = StepStop(), sampling: SamplingParams = SamplingParams(), seed: int = 0,
                 progress: bool = True, constraint: Optional[ConstraintFn] = None, distinct: bool = False,
                 on_error: str = "isolate"):
        if not isinstance(stop, StepStop):
            raise TypeError(f"stop must be a StepStop, got {type(stop).__name__}")
        if not isinstance(sampling, SamplingParams):
            raise TypeError(f"sampling must be a SamplingParams, got {type(sampling).__name__}")
        if verifier is not None and not isinstance(verifier, Verifier):
            raise TypeError(f"verifier must be a ponder.Verifier, got {type(verifier).__name__}")
        if not isinstance(aggregation, Aggregation):
            raise TypeError(f"aggregation must be a ponder.Aggregation, got {type(aggregation).__name__}")
        if constraint is not None and not (callable(constraint) or isinstance(constraint, StepConstraint)):
            raise TypeError(f"constraint must be a ponder.StepConstraint or callable (problem index, path text) -> "
                            f"token ids or None, got {type(constraint).__name__}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
        self.policy, self.scorer, self.verifier = policy, scorer, verifier
        self.aggregation, self.stop, self.sampling, self.seed = aggregation, stop, sampling, int(seed)
        self.progress = progress
        self.constraint = constraint
        self.distinct = bool(distinct)
        self.on_error = on_error
        self.step_token_cache: dict = {}  # step text -> token ids (a StepConstraint's steps, encoded once)
        self.forest = Forest()
        self.node_data = NodeData()
        self.trees: List[TreeState] = []
        self.model_calls_at_start = 0
        self.wall_time = 0.0

    # ------------------------------------------------------------------ setup
    def start(self, prompts: Sequence, budget: Budget) -> None:
        self.model_calls_at_start = self.policy.stats.model_calls
        self.add(prompts, budget)

    def add(self, prompts: Sequence, budget: Budget) -> List[TreeState]:
        """Prefill ``prompts`` as new problems of this session (problem indices continue from the
        last one); they join the next round. Returns their TreeStates."""
        if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__len__"):
            raise TypeError(f"prompts must be a list of prompts, got {type(prompts).__name__}")
        if len(prompts) == 0:
            raise ValueError("prompts is empty: give at least one problem")
        if not isinstance(budget, Budget):
            raise TypeError(f"budget must be a ponder.Budget, got {type(budget).__name__}")
        handles = np.asarray(self.policy.prefill(prompts, evict=self.evict_order))
        tokens = [np.asarray(self.policy.tokens(int(h)), dtype=np.int32) for h in handles]
        indptr = np.zeros(len(tokens) + 1, dtype=np.int64)
        np.cumsum([t.size for t in tokens], out=indptr[1:])
        roots = self.forest.add_roots(np.concatenate(tokens), indptr)
        self.forest.set_page_seqs(roots, handles.astype(np.int32))
        self.node_data.reserve(self.forest.num_nodes)
        now = time.perf_counter()
        added = []
        for r in roots.tolist():
            t = TreeState(index=len(self.trees), root=int(r), budget=budget, usage=Usage(started=now))
            t.algo = self.new_state(t)
            self.trees.append(t)
            added.append(t)
        return added

    # ------------------------------------------------------------------ the round
    def round(self, trees: List[TreeState]) -> None:
        """One batched round over every active tree: select -> expand -> score -> add -> update."""
        sel = self.select(trees)
        kids = Children.empty()
        if sel.nodes:
            try:
                exp = self.policy.expand(
                    self.handles(sel.nodes), sel.counts, stop=self.stop, sampling=self.sampling, seed=self.seed,
                    rng_ids=self.node_data.local_id[sel.nodes], distinct=self.distinct, evict=self.evict_order,
                    **self.constraint_args(sel))
            except ProblemFailure as failure:  # a constraint failed: that problem goes, the rest retry
                self.forest.cancel(sel.nodes)
                self.fail(failure)
                return
            except BaseException:
                self.forest.cancel(sel.nodes)  # selected leaves stop being pending
                raise
            try:
                exp, kids = self.score(sel, exp)
            except BaseException:  # fail fast: the new children never join the forest, nothing leaks
                self.forest.cancel(sel.nodes)
                self.discard(exp.children)
                raise
            self.add_children(sel, exp, kids)
        self.update(sel, kids)

    def add_children(self, sel: Selection, exp: Expansion, kids: Children) -> None:
        """Add the scored children with one ``Forest.add_children`` call (priors, rewards, path
        scores, terminal flags, sequence handles) and free the KV of the terminal ones."""
        c = len(exp.children)
        if c == 0:
            return
        f, nd = self.forest, self.node_data
        depth = np.asarray(f.depth)[kids.parents] + 1
        agg = kids.agg if kids.agg is not None else self.aggregation.combine(nd.agg[kids.parents], kids.scores, depth)
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

    # ------------------------------------------------------------------ run, results, resume
    def step(self, trees: Optional[List[TreeState]] = None) -> List[TreeState]:
        """One round over the active trees among ``trees`` (default: all), then their budgets;
        returns the trees that stopped in it."""
        active = [t for t in (self.trees if trees is None else trees) if t.stop_reason is None]
        if not active:
            return []
        t0 = time.perf_counter()
        before = [(t.usage.expansions, t.usage.tokens) for t in active]
        self.round(active)
        now = time.perf_counter()
        kv = int(self.policy.kv_stats()["kv_bytes_in_use"])
        stopped = []
        for t, spent in zip(active, before):
            if t.stop_reason is not None:  # failed in this round
                stopped.append(t)
                continue
            t.usage.iterations += 1
            if (t.usage.expansions, t.usage.tokens) == spent:
                t.usage.empty_rounds += 1
            t.usage.observe(self.answer(t), self.root_value(t), t.budget.converge_tol)
            reason = check(t.budget, t.usage, now, kv, bool(t.verified))
            if reason is None and self.exhausted(t):
                reason = "exhausted"
            if reason is not None:
                t.stop_reason = reason
                stopped.append(t)
        self.wall_time += now - t0
        return stopped

    def run(self, trees: Optional[List[TreeState]] = None) -> None:
        """Rounds until every tree among ``trees`` (default: all) has a stop reason."""
        trees = self.trees if trees is None else trees
        bar = tqdm(desc=self.algorithm, unit="round", disable=not self.progress, leave=False)
        try:
            while any(t.stop_reason is None for t in trees):
                self.step(trees)
                bar.update(1)
                bar.set_postfix(active=sum(t.stop_reason is None for t in trees),
                                verified=sum(bool(t.verified) for t in trees),
                                tokens=sum(t.usage.tokens for t in trees), refresh=False)
        finally:
            bar.close()

    def cancel(self, tree: TreeState, reason: str = "cancelled") -> None:
        """End ``tree`` now (``reason`` one of STOP_REASONS) and free its tree and KV."""
        if reason not in STOP_REASONS:
            raise ValueError(f"reason must be one of {STOP_REASONS}, got {reason!r}")
        if tree.stop_reason is None:
            tree.stop_reason = reason
        self.release(tree)

    def result(self, tree: TreeState):
        """A :class:`~ponder.search.result.SearchResult` snapshot of ``tree`` (its best answer so
        far while it is still being searched)."""
        from ponder.search.result import build_result

        return build_result(self, tree)

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
