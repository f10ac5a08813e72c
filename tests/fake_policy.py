"""A deterministic stand-in for ponder.Engine (no model): golden trees for the search layer."""

import numpy as np
import torch

from ponder.expansion import EngineStats, Expansion
from ponder.forest import NO_PAGES, Forest


class DigitTokenizer:
    def encode(self, text):
        return [int(c) for c in text]

    def decode(self, ids):
        return "".join(str(int(i) % 10) for i in ids)


class FakePolicy:
    """Child j of a node gets the single token ``j + 1``; the path of child indices decides the
    step score through ``scores`` (a dict from index paths to scores, default ``by_index[j]``).
    Nodes at ``max_depth`` are terminal."""

    def __init__(self, by_index=(0.2, 0.8), scores=None, max_depth=3):
        self.forest = Forest()
        self.tokenizer = DigitTokenizer()
        self.stats = EngineStats()
        self.by_index, self.scores, self.max_depth = by_index, dict(scores or {}), max_depth
        self.expanded = []  # nodes per expand call, in call order
        self.evicted = []
        self._index_path = {}

    def add_prompts(self, prompts):
        toks = [np.asarray([int(t) for t in p], dtype=np.int32) for p in prompts]
        indptr = np.zeros(len(toks) + 1, dtype=np.int64)
        np.cumsum([len(t) for t in toks], out=indptr[1:])
        roots = self.forest.add_roots(np.concatenate(toks), indptr)
        for r in roots.tolist():
            self._index_path[r] = ()
        return roots

    def expand(self, nodes, num_children=1, stop=None, sampling=None, seed=0, rng_ids=None):
        nodes = [int(n) for n in nodes]
        counts = np.broadcast_to(np.asarray(num_children), (len(nodes),)).tolist()
        self.expanded.append(list(nodes))
        self.stats.model_calls += 1
        parents, tokens, paths = [], [], []
        for n, k in zip(nodes, counts):
            base = int(self.forest.num_children[n])
            for j in range(base, base + k):
                parents.append(n)
                tokens.append(np.asarray([j + 1], dtype=np.int32))
                paths.append(self._index_path[n] + (j,))
        c = len(parents)
        indptr = np.arange(c + 1, dtype=np.int64)
        terminal = np.array([len(p) >= self.max_depth for p in paths], dtype=bool)
        uniq = list(dict.fromkeys(nodes))
        children = self.forest.add_children(np.asarray(uniq, dtype=np.int32),
                                            np.asarray([parents.count(u) for u in uniq], dtype=np.int32),
                                            np.full(c, 1.0 / max(counts), dtype=np.float32),
                                            np.concatenate(tokens), indptr, terminal=terminal)
        for ch, p in zip(children.tolist(), paths):
            self._index_path[ch] = p
        scores = torch.tensor([self.scores.get(p, self.by_index[p[-1] % len(self.by_index)]) for p in paths],
                              dtype=torch.float32)
        return Expansion(parents=np.asarray(parents, dtype=np.int32), children=children, tokens=tokens,
                         logprobs=[np.zeros(1, dtype=np.float32) for _ in range(c)], hidden=torch.zeros(c, 4),
                         values=scores, finish_reasons=["eos" if t else "stop" for t in terminal], terminal=terminal)

    def evict_nodes(self, nodes):
        self.evicted.extend(int(n) for n in nodes)
        return len(nodes)

    def kv_stats(self):
        return {"kv_bytes_in_use": 0, "kv_bytes_peak": 0, "tokens_prefilled": 0, "prefix_queries": 0,
                "prefix_hits": 0}

    def index_path(self, node):
        return self._index_path[int(node)]


__all__ = ["DigitTokenizer", "FakePolicy", "NO_PAGES"]
