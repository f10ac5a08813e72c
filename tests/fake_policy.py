"""A deterministic stand-in for ponder.Engine (no model): golden trees for the search layer."""

import numpy as np
import torch

from ponder.expansion import EngineStats, Expansion


class DigitTokenizer:
    def encode(self, text):
        return [int(c) for c in text]

    def decode(self, ids):
        return "".join(str(int(i) % 10) for i in ids)


class FakePolicy:
    """Sequence handles like the engine's. Child j of a sequence gets the single token ``j + 1``
    (j counts the children drawn there so far); the path of child indices decides the step score
    through ``scores`` (a dict from index paths to scores, default ``by_index[j]``). Sequences at
    ``max_depth`` are terminal."""

    def __init__(self, by_index=(0.2, 0.8), scores=None, max_depth=3):
        self.tokenizer = DigitTokenizer()
        self.stats = EngineStats()
        self.by_index, self.scores, self.max_depth = by_index, dict(scores or {}), max_depth
        self.expanded = []  # handles per expand call, in call order
        self.evicted = []
        self.freed = []
        self._tokens = {}  # handle -> full token path
        self._index_path = {}
        self._draws = {}

    def _new(self, tokens, path):
        h = len(self._tokens)
        self._tokens[h] = list(tokens)
        self._index_path[h] = path
        return h

    def prefill(self, prompts, evict=None):
        return np.asarray([self._new([int(t) for t in p], ()) for p in prompts], dtype=np.int64)

    def tokens(self, h):
        return np.asarray(self._tokens[int(h)], dtype=np.int32)

    def expand(self, seqs, num_children=1, stop=None, sampling=None, seed=0, rng_ids=None, allowed_tokens=None,
               distinct=False, evict=None):
        seqs = [int(n) for n in seqs]
        counts = np.broadcast_to(np.asarray(num_children), (len(seqs),)).tolist()
        self.expanded.append(list(seqs))
        self.stats.model_calls += 1
        parents, index, children, tokens, paths = [], [], [], [], []
        for i, (n, k) in enumerate(zip(seqs, counts)):
            base = self._draws.get(n, 0)
            self._draws[n] = base + k
            for j in range(base, base + k):
                path = self._index_path[n] + (j,)
                parents.append(n)
                index.append(i)
                tokens.append(np.asarray([j + 1], dtype=np.int32))
                children.append(self._new(self._tokens[n] + [j + 1], path))
                paths.append(path)
        c = len(parents)
        terminal = np.array([len(p) >= self.max_depth for p in paths], dtype=bool)
        scores = torch.tensor([self.scores.get(p, self.by_index[p[-1] % len(self.by_index)]) for p in paths],
                              dtype=torch.float32)
        return Expansion(parents=np.asarray(parents, dtype=np.int64), children=np.asarray(children, dtype=np.int64),
                         parent_index=np.asarray(index, dtype=np.int64), tokens=tokens,
                         logprobs=[np.zeros(1, dtype=np.float32) for _ in range(c)], hidden=torch.zeros(c, 4),
                         values=scores, finish_reasons=["eos" if t else "stop" for t in terminal], terminal=terminal,
                         priors=np.full(c, 1.0 / max(counts), dtype=np.float32))

    def evict(self, seqs):
        self.evicted.extend(int(n) for n in seqs)
        return len(seqs)

    def free(self, seqs):
        self.freed.extend(int(n) for n in seqs)

    def has_kv(self, seqs):
        return np.array([int(s) not in self.evicted for s in seqs], dtype=bool)

    def kv_stats(self):
        return {"kv_bytes_in_use": 0, "kv_bytes_peak": 0, "tokens_prefilled": 0, "prefix_queries": 0,
                "prefix_hits": 0}

    def index_path(self, handle):
        return self._index_path[int(handle)]


__all__ = ["DigitTokenizer", "FakePolicy"]
