"""A plain-Python model of ponder's Forest, the oracle of the property tests.

It keeps children as Python lists (not linked lists) and recomputes everything it can from
them, so it shares no structure with the C++ code. Arithmetic follows the documented formulas
in the same order in double precision, so select picks the same children even on near ties.
Errors raise the same exception types as the Forest; the model is unchanged when it raises.
"""

from __future__ import annotations

import math

import numpy as np

NO_NODE = NO_PARENT = NO_PAGES = -1


def f32(x) -> float:
    return float(np.float32(x))


class ForestModel:
    def __init__(self):
        self.parent, self.kids, self.depth, self.tree = [], [], [], []
        self.visits, self.value_sum, self.vl = [], [], []
        self.prior, self.reward, self.path_score = [], [], []
        self.terminal, self.alive, self.pending = [], [], []
        self.page_seq, self.offset, self.length = [], [], []
        self.tokens = []

    @property
    def num_nodes(self) -> int:
        return len(self.parent)

    @property
    def num_alive(self) -> int:
        return sum(self.alive)

    # --- checks ----------------------------------------------------------------------------------
    def _live(self, n: int) -> None:
        if not 0 <= n < self.num_nodes:
            raise IndexError(f"node {n} out of range")
        if not self.alive[n]:
            raise ValueError(f"node {n} was released")

    def _root(self, n: int) -> None:
        self._live(n)
        if self.parent[n] != NO_PARENT:
            raise ValueError(f"node {n} is not a root")

    @staticmethod
    def _finite(xs) -> None:
        if not all(math.isfinite(x) for x in xs):
            raise ValueError("not finite")

    # --- structure -------------------------------------------------------------------------------
    def _new(self, parent: int, toks) -> int:
        n = self.num_nodes
        self.parent.append(parent)
        self.kids.append([])
        self.depth.append(0 if parent == NO_PARENT else self.depth[parent] + 1)
        self.tree.append(n if parent == NO_PARENT else self.tree[parent])
        self.visits.append(0)
        self.value_sum.append(0.0)
        self.vl.append(0)
        self.prior.append(1.0)
        self.reward.append(0.0)
        self.path_score.append(0.0)
        self.terminal.append(False)
        self.alive.append(True)
        self.pending.append(False)
        self.page_seq.append(NO_PAGES)
        self.offset.append(len(self.tokens))
        self.length.append(len(toks))
        self.tokens.extend(toks)
        if parent != NO_PARENT:
            self.kids[parent].append(n)
        return n

    def add_roots(self, token_lists):
        return [self._new(NO_PARENT, list(t)) for t in token_lists]

    def add_children(self, parents, counts, priors, token_lists, rewards=None, terminal=None,
                     path_scores=None, page_seqs=None):
        for p in parents:
            self._live(p)
            if self.terminal[p]:
                raise ValueError(f"node {p} is terminal")
        if any(c < 1 for c in counts):
            raise ValueError("counts must be >= 1")
        c = sum(counts)
        priors = [f32(x) for x in priors]
        self._finite(priors)
        if any(x < 0 for x in priors):
            raise ValueError("negative prior")
        rewards = [0.0] * c if rewards is None else [f32(x) for x in rewards]
        self._finite(rewards)
        scores = list(rewards) if path_scores is None else [f32(x) for x in path_scores]
        self._finite(scores)
        terminal = [False] * c if terminal is None else [bool(t) for t in terminal]
        pages = [NO_PAGES] * c if page_seqs is None else list(page_seqs)
        if any(s < NO_PAGES for s in pages):
            raise ValueError("bad page handle")
        ids, j = [], 0
        for p, cnt in zip(parents, counts):
            for _ in range(cnt):
                n = self._new(p, token_lists[j])
                self.prior[n], self.reward[n], self.path_score[n] = priors[j], rewards[j], scores[j]
                self.terminal[n], self.page_seq[n] = terminal[j], pages[j]
                ids.append(n)
                j += 1
        return ids

    def _preorder(self, n: int):
        out = [n]
        for c in self.kids[n]:
            out.extend(self._preorder(c))
        return out

    def _ancestors(self, n: int):
        """n, parent(n), ..., root."""
        out = []
        while n != NO_PARENT:
            out.append(n)
            n = self.parent[n]
        return out

    def release(self, node: int):
        self._live(node)
        sub = self._preorder(node)
        pending_below = sum(self.pending[n] for n in sub)
        for n in sub:
            self.alive[n] = False
            self.pending[n] = False
        p = self.parent[node]
        if p != NO_PARENT:
            self.kids[p].remove(node)
            for a in self._ancestors(p):
                self.vl[a] -= pending_below
        return [self.page_seq[n] for n in sub if self.page_seq[n] != NO_PAGES]

    # --- search ----------------------------------------------------------------------------------
    def _puct_child(self, n, c_puct, vl_value, fpu):
        sqrt_parent = math.sqrt(max(self.visits[n] + self.vl[n], 1))
        scores = []
        for c in self.kids[n]:
            n_eff = self.visits[c] + self.vl[c]
            q = (self.value_sum[c] - vl_value * self.vl[c]) / n_eff if n_eff > 0 else fpu
            u = c_puct * self.prior[c] * sqrt_parent / (1 + n_eff)
            scores.append(q + u)
        return self.kids[n][scores.index(max(scores))]

    def select(self, roots, k, c_puct, vl_value, fpu, pw_k=0.0, pw_alpha=0.5):
        if k < 1 or c_puct < 0 or vl_value < 0 or pw_k < 0 or not 0 <= pw_alpha <= 1:
            raise ValueError("bad select parameter")
        for r in roots:
            self._root(r)
        out = []
        for r in roots:
            row = []
            for _ in range(k):
                n = r
                while not self.terminal[n] and self.kids[n]:
                    if pw_k > 0 and len(self.kids[n]) < pw_k * math.pow(max(self.visits[n], 1), pw_alpha):
                        break
                    n = self._puct_child(n, c_puct, vl_value, fpu)
                if self.pending[n]:
                    break
                self.pending[n] = True
                for a in self._ancestors(n):
                    self.vl[a] += 1
                row.append(n)
            out.append(row + [NO_NODE] * (k - len(row)))
        return out

    def backup(self, nodes, values, discount=1.0):
        if not 0 < discount <= 1:
            raise ValueError("bad discount")
        for n in nodes:
            self._live(n)
        values = [f32(v) for v in values]
        self._finite(values)
        for n, v in zip(nodes, values):
            was_pending = self.pending[n]
            self.pending[n] = False
            for a in self._ancestors(n):
                self.visits[a] += 1
                self.value_sum[a] += v
                if was_pending:
                    self.vl[a] -= 1
                v *= discount

    def cancel(self, nodes):
        for n in nodes:
            self._live(n)
        for n in nodes:
            if self.pending[n]:
                self.pending[n] = False
                for a in self._ancestors(n):
                    self.vl[a] -= 1

    # --- queries ---------------------------------------------------------------------------------
    def _mean(self, n):
        return self.value_sum[n] / self.visits[n] if self.visits[n] > 0 else -math.inf

    def _key(self, n, key):
        if key == "value":
            return self._mean(n)
        return {"path_score": self.path_score, "reward": self.reward, "visits": self.visits,
                "prior": self.prior}[key][n]

    def top_k(self, frontier, k, key, by_tree=True):
        for n in frontier:
            self._live(n)
        if k < 1 or len(set(frontier)) != len(frontier):
            raise ValueError("bad k or duplicate frontier node")
        groups = {}
        for n in frontier:
            groups.setdefault(self.tree[n] if by_tree else 0, []).append(n)
        out = []
        for members in groups.values():
            out.extend(sorted(members, key=lambda n: (-self._key(n, key), n))[:k])
        return out

    def best_path(self, root, by):
        self._root(root)
        if by == "score":
            sub = self._preorder(root)
            cands = [n for n in sub if self.terminal[n]] or [n for n in sub if not self.kids[n]]
            best = min(cands, key=lambda n: (-self.path_score[n], n))
            return self._ancestors(best)[::-1]
        path = [root]
        while self.kids[path[-1]]:
            kids = self.kids[path[-1]]
            if by == "visits":
                path.append(max(kids, key=lambda c: (self.visits[c], self._mean(c))))
            else:
                visited = [c for c in kids if self.visits[c] > 0]
                path.append(max(visited, key=self._mean) if visited else kids[0])
        return path

    def frontier(self, roots):
        for r in roots:
            self._root(r)
        return [n for r in roots for n in self._preorder(r) if not self.kids[n] and not self.terminal[n]]

    def node_tokens(self, n):
        self._live(n)
        return self.tokens[self.offset[n]:self.offset[n] + self.length[n]]

    def path_tokens(self, n):
        self._live(n)
        out = []
        for a in reversed(self._ancestors(n)):
            out.extend(self.tokens[self.offset[a]:self.offset[a] + self.length[a]])
        return out

    def children(self, n):
        self._live(n)
        return list(self.kids[n])

    # --- setters ---------------------------------------------------------------------------------
    def _set(self, field, nodes, values, check=None):
        for n in nodes:
            self._live(n)
        if check is not None:
            check(nodes, values)
        for n, v in zip(nodes, values):
            field[n] = v

    def set_path_scores(self, nodes, values):
        self._set(self.path_score, nodes, [f32(v) for v in values], lambda n, v: self._finite(v))

    def set_rewards(self, nodes, values):
        self._set(self.reward, nodes, [f32(v) for v in values], lambda n, v: self._finite(v))

    def set_page_seqs(self, nodes, seqs):
        def check(ns, ss):
            if any(s < NO_PAGES for s in ss):
                raise ValueError("bad page handle")

        self._set(self.page_seq, nodes, list(seqs), check)

    def set_terminal(self, nodes, flags):
        def check(ns, fs):
            if any(f and self.kids[n] for n, f in zip(ns, fs)):
                raise ValueError("only leaves can be terminal")

        self._set(self.terminal, nodes, [bool(f) for f in flags], check)

    # --- export ----------------------------------------------------------------------------------
    def export(self):
        """The Forest's arrays, derived from the child lists."""
        n = self.num_nodes
        first = [k[0] if k else NO_NODE for k in self.kids]
        last = [k[-1] if k else NO_NODE for k in self.kids]
        nxt = [NO_NODE] * n
        for kids in self.kids:
            for a, b in zip(kids, kids[1:]):
                nxt[a] = b
        i32 = np.int32
        return {
            "parent": np.array(self.parent, i32), "first_child": np.array(first, i32),
            "last_child": np.array(last, i32), "next_sibling": np.array(nxt, i32),
            "num_children": np.array([len(k) for k in self.kids], i32), "depth": np.array(self.depth, i32),
            "visits": np.array(self.visits, i32), "value_sum": np.array(self.value_sum, np.float64),
            "virtual_loss": np.array(self.vl, i32), "prior": np.array(self.prior, np.float32),
            "reward": np.array(self.reward, np.float32), "path_score": np.array(self.path_score, np.float32),
            "terminal": np.array(self.terminal, bool), "token_offset": np.array(self.offset, np.int64),
            "token_len": np.array(self.length, i32), "page_seq": np.array(self.page_seq, i32),
            "tree": np.array(self.tree, i32), "alive": np.array(self.alive, bool),
            "pending": np.array(self.pending, bool), "tokens": np.array(self.tokens, i32),
        }
