"""How a search session calls user code each round (scorer, verifier, constraint), checks what
comes back, and keeps a failure to the problem it belongs to.

With ``on_error="isolate"`` (the default) a callback that raises, or returns something other
than what it promises (scores outside [0, 1] or not finite, constraint answers that are not
token ids), fails only the problem it was called for: the problem stops with stop reason
``"error"`` and the exception in its result, its KV is freed, and every other problem goes on
exactly as if the failed one had never been in the batch. A scorer is called once per round for
all problems; when it raises, each problem's children are scored on their own to find the
culprit. ``on_error="raise"`` re-raises the first failure instead.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from ponder.decoding import StepConstraint
from ponder.expansion import Expansion
from ponder.scoring import constant_scores, fused_scores
from ponder.search.state import Children, ProblemFailure, Selection, TreeState


def _token_ids(out) -> np.ndarray:
    """A constraint's answer as int64 token ids; TypeError for anything but ints (no silent
    truncation of floats, no strings)."""
    if isinstance(out, (str, bytes)):
        raise TypeError(f"constraint returned a {type(out).__name__}; expected token ids (ints) or None")
    arr = np.asarray(list(out) if not isinstance(out, np.ndarray) else out)
    if arr.size and (arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise TypeError(f"constraint returned {arr.dtype} values of shape {arr.shape}; expected a 1-D list of "
                        f"token ids (ints) or None")
    return arr.astype(np.int64)


class Callbacks:
    """Mixed into :class:`~ponder.search.session.Session` (which provides ``policy``, ``scorer``,
    ``verifier``, ``constraint``, ``on_error``, ``forest``, ``text``, ``handles`` and ``evict``)."""

    def score(self, sel: Selection, exp: Expansion):
        """Step scores of the new children (scorer, then verifier verdicts), charged to each tree.
        Returns (expansion, children); children of problems whose callbacks failed are dropped."""
        for t in sel.trees:
            t.usage.expansions += 1
        if exp.discarded_tokens:  # duplicates dropped by distinct=True were generated too
            tree_of = dict(zip(self.handles(sel.nodes).tolist(), sel.trees))
            for h, k in exp.discarded_tokens.items():
                tree_of[h].usage.tokens += k
        trees = [sel.trees[i] for i in exp.parent_index.tolist()]
        for t, toks in zip(trees, exp.tokens):
            t.usage.tokens += len(toks)
        failed: dict = {}  # id(tree) -> ProblemFailure
        parents = np.asarray(sel.nodes, dtype=np.int32)[exp.parent_index]
        depth = np.asarray(self.forest.depth)[parents] + 1
        scores, agg = self._step_scores(exp, trees, failed, self.node_data.agg[parents], depth)
        c = len(exp.children)
        terminal, verified = exp.terminal.copy(), np.zeros(c, dtype=bool)
        if self.verifier is not None:
            for i, (t, p, toks) in enumerate(zip(trees, parents.tolist(), exp.tokens)):
                if id(t) in failed:
                    continue
                try:
                    verdict = self.verifier.check(t.index, self.text(p, toks))
                except Exception as err:  # noqa: BLE001  (any failure of user code fails its problem)
                    failed[id(t)] = ProblemFailure(t, "verifier", err)
                    continue
                if verdict is not None:
                    terminal[i], scores[i], verified[i] = True, verdict, verdict >= 1.0
                    if agg is not None:  # the fused aggregate used the scorer's score
                        agg[i] = self.aggregation.combine(self.node_data.agg[p:p + 1], scores[i:i + 1],
                                                          depth[i:i + 1])[0]
        logprob = np.array([float(np.sum(lp, dtype=np.float64)) for lp in exp.logprobs], dtype=np.float64)
        kids = Children(np.zeros(c, np.int32), parents, trees, scores, terminal, verified, logprob, agg)
        if failed:
            if self.on_error == "raise":  # before anything is freed: the caller frees the whole round
                raise next(iter(failed.values())).cause
            keep = np.array([id(t) not in failed for t in trees], dtype=bool)
            self.discard(exp.children[~keep])
            exp = exp.subset(keep)
            kids = Children(kids.nodes[keep], parents[keep], [t for t, k in zip(trees, keep) if k], scores[keep],
                            terminal[keep], verified[keep], logprob[keep], None if agg is None else agg[keep])
            bad = {id(f.tree) for f in failed.values()}
            self.forest.cancel([n for n, t in zip(sel.nodes, sel.trees) if id(t) in bad])
            for f in failed.values():
                self.fail(f)
        return exp, kids

    def _step_scores(self, exp: Expansion, trees: List[TreeState], failed: dict, parent_agg: np.ndarray,
                     depth: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """(float32 [C] step scores in [0, 1], float64 [C] aggregated path scores or None).

        A scorer with a ``readout`` (the built-in ones) is scored and aggregated in one fused
        ``ops.value_score`` call; others through ``score``. A problem whose scores raise or are
        not in [0, 1] fails."""
        c = len(exp.children)
        if self.scorer is None or c == 0:
            return constant_scores(c), None
        name = f"scorer {type(self.scorer).__name__}"
        agg = None
        try:
            readout = self.scorer.readout(self.policy, exp) if hasattr(self.scorer, "readout") else None
            if readout is not None:
                scores, agg = fused_scores(readout, parent_agg, depth, self.aggregation.mode)
            else:
                scores = self._checked_scores(self.scorer.score(self.policy, exp), c, name)
        except ProblemFailure:
            raise
        except Exception:  # noqa: BLE001
            if self.on_error == "raise":
                raise
            # find the problem(s) at fault: score each problem's children on their own
            scores = np.full(c, np.nan, dtype=np.float32)
            for t in {id(t): t for t in trees}.values():
                mine = np.array([u is t for u in trees], dtype=bool)
                try:
                    scores[mine] = self._checked_scores(self.scorer.score(self.policy, exp.subset(mine)),
                                                        int(mine.sum()), name)
                except Exception as one:  # noqa: BLE001
                    failed[id(t)] = ProblemFailure(t, name, one)
            return scores, None
        for i, t in enumerate(trees):
            if not 0.0 <= scores[i] <= 1.0 and id(t) not in failed:
                failed[id(t)] = ProblemFailure(t, name, ValueError(
                    f"{name} returned {float(scores[i])!r} for child {i}; step scores must be finite and in [0, 1]"))
        if failed and self.on_error == "raise":
            raise next(iter(failed.values())).cause
        return scores, agg

    @staticmethod
    def _checked_scores(out, c: int, name: str) -> np.ndarray:
        try:
            scores = np.asarray(out, dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} returned {type(out).__name__}, not {c} numbers: {err}") from None
        if scores.shape != (c,):
            raise ValueError(f"{name} returned scores of shape {scores.shape}; expected ({c},), one per child")
        return scores

    def fail(self, failure: ProblemFailure) -> None:
        """Per-problem fault isolation: record the failure on its tree, stop it, free its KV (the
        tree stays for the result); with ``on_error="raise"`` re-raise the original exception."""
        if self.on_error == "raise":
            raise failure.cause
        t = failure.tree
        t.stop_reason, t.error = "error", str(failure)
        self.evict(np.nonzero(np.asarray(self.forest.tree) == t.root)[0])

    def discard(self, handles: np.ndarray) -> None:
        """Free children that never joined the forest (their problem failed in this round)."""
        if handles.size:
            self.policy.free(handles)
            if hasattr(self.scorer, "free"):
                self.scorer.free(handles)

    def constraint_args(self, sel: Selection) -> dict:
        """``Engine.expand`` keywords for ``self.constraint``: ``allowed_steps`` (one list of
        step token sequences, or None, per selected node) for a :class:`StepConstraint`,
        ``allowed_tokens`` (a per-token callback) for a plain callable, nothing without one."""
        if self.constraint is None:
            return {}
        if isinstance(self.constraint, StepConstraint):
            return {"allowed_steps": self._allowed_steps(sel)}
        return {"allowed_tokens": self._allowed_tokens(sel)}

    def _allowed_steps(self, sel: Selection) -> list:
        tok = self.policy.tokenizer
        out = []
        for node, tree in zip(sel.nodes, sel.trees):
            try:
                steps = self.constraint.steps(tree.index, self.text(node))
                out.append(None if steps is None else [self._encode_step(tok, s) for s in steps])
            except Exception as err:  # noqa: BLE001  (user code: its failure fails its problem)
                raise ProblemFailure(tree, "constraint", err) from err
        return out

    def _encode_step(self, tok, step: str) -> list:
        ids = self.step_token_cache.get(step)
        if ids is None:
            try:  # a step is a continuation: no BOS or other special tokens around it
                ids = tok.encode(step, add_special_tokens=False)
            except TypeError:
                ids = tok.encode(step)
            ids = self.step_token_cache[step] = [int(t) for t in ids]
        return ids

    def _allowed_tokens(self, sel: Selection):
        """The engine-level form of a per-token constraint: (parent handle, step tokens) -> ids."""
        tok = self.policy.tokenizer
        if tok is None:
            raise ValueError("constraint needs a policy engine with a tokenizer (it is called with text)")
        node_of = dict(zip(self.handles(sel.nodes).tolist(), zip(sel.nodes, sel.trees)))
        prefix = {}

        def allowed(parent: int, step_tokens: List[int]):
            node, tree = node_of[parent]
            if parent not in prefix:
                prefix[parent] = self.text(node)
            try:
                out = self.constraint(tree.index, prefix[parent] + tok.decode(step_tokens))
                return None if out is None else _token_ids(out)
            except Exception as err:  # noqa: BLE001  (user code: its failure fails its problem)
                raise ProblemFailure(tree, "constraint", err) from err

        return allowed
