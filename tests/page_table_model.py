"""A small pure-Python page table: the oracle for the property tests of ponder.page_table.

Same observable behaviour as the native table, written for obviousness rather than speed:
- the prefix cache is keyed by the exact chain content (an interned (parent key, page tokens)
  pair), where the native table uses a 64-bit hash plus verification; the two agree whenever
  the hash does not collide;
- a request that cannot be satisfied is detected by running it and rolling the whole state
  back when the pool runs dry, where the native table computes its need up front. Agreement
  of the two shows that the native need computation is exact.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field


class PoolFull(Exception):
    """The model's counterpart of ponder.page_table.KVCacheFull."""


class _OutOfPages(Exception):
    pass


@dataclass
class _Seq:
    pages: list = field(default_factory=list)
    num_tokens: int = 0
    chain_ok: bool = False  # all tokens known, so full pages can join the cache
    chain_key: int = 0  # content key of the last full page (0: none yet)
    chain_uid: int = 0  # uid of the cache entry holding that content (0: none yet)
    tail: list = field(default_factory=list)  # tokens of the partial last page


class PageTableModel:
    def __init__(self, num_pages: int, page_size: int, prefix_cache: bool = True):
        if num_pages < 1 or page_size < 1:
            raise ValueError("num_pages and page_size must be >= 1")
        self.P, self.S, self.prefix_cache = num_pages, page_size, prefix_cache
        self.refcount = [0] * num_pages
        self.free_list = list(range(num_pages - 1, -1, -1))  # a stack: pop() gives 0, 1, 2, ...
        self.lru = []  # evictable cached pages, oldest release first
        self.cache = {}  # content key -> page
        self.entry = {}  # registered page -> (key, uid, parent uid)
        self.next_uid = 1
        self.seqs = {}  # live handle -> _Seq
        self.next_seq = 0
        self.queries = self.hits = self.peak_used = 0
        self._keys = {}  # (parent key, page tokens) -> content key, never forgotten

    # --------------------------------------------------------------- public operations ------

    def allocate(self, tokens):
        tokens = list(tokens)
        if not tokens or min(tokens) < 0:
            raise ValueError("tokens must be non-empty and non-negative")
        return self._transaction(lambda: self._allocate(tokens))

    def fork(self, seq):
        parent = self._live(seq)
        child = self._new_seq()
        self.seqs[child] = copy.deepcopy(parent)
        for p in parent.pages:
            self._add_ref(p)
        return child

    def fork_many(self, seqs):
        for s in seqs:
            self._live(s)
        return [self.fork(s) for s in seqs]

    def free_many(self, seqs):
        for s in seqs:
            self._live(s)
        if len(set(seqs)) != len(seqs):
            raise ValueError("seqs must be distinct")
        for s in seqs:
            self.free(s)

    def append(self, seqs, counts, tokens=None):
        seqs, counts = list(seqs), list(counts)
        if len(seqs) != len(counts):
            raise ValueError("seqs and counts must have the same length")
        for s in seqs:
            self._live(s)
        if len(set(seqs)) != len(seqs) or any(c < 0 for c in counts):
            raise ValueError("seqs must be distinct and counts >= 0")
        if tokens is not None:
            tokens = list(tokens)
            if len(tokens) != sum(counts) or any(t < 0 for t in tokens):
                raise ValueError("tokens must hold sum(counts) non-negative ids")
        return self._transaction(lambda: self._append(seqs, counts, tokens))

    def free(self, seq):
        s = self._live(seq)
        for p in reversed(s.pages):
            self._release(p)
        del self.seqs[seq]

    def can_allocate(self, tokens):
        if isinstance(tokens, int):
            if tokens < 1:
                raise ValueError("n_tokens must be >= 1")
            return -(-tokens // self.S) <= len(self.free_list) + len(self.lru)
        return self._succeeds(lambda: self.allocate(tokens))

    def can_append(self, seqs, counts):
        return self._succeeds(lambda: self.append(seqs, counts))

    def batch_tables(self, seqs, pad=-1, max_pages=None):
        rows = [self._live(s).pages for s in seqs]
        width = max((len(r) for r in rows), default=0)
        if max_pages is not None:
            if max_pages < width:
                raise ValueError("max_pages is smaller than the longest page list")
            width = max_pages
        tables = [r + [pad] * (width - len(r)) for r in rows]
        return tables, [self.seqs[s].num_tokens for s in seqs]

    def pages(self, seq):
        return list(self._live(seq).pages)

    def num_tokens(self, seq):
        return self._live(seq).num_tokens

    def slot_of(self, seq, t):
        s = self._live(seq)
        if not 0 <= t < s.num_tokens:
            raise IndexError("t out of range")
        return s.pages[t // self.S] * self.S + t % self.S

    def free_pages(self):
        return self.free_list[::-1]

    def evictable_pages(self):
        return list(self.lru)

    def live_seqs(self):
        return sorted(self.seqs)

    def stats(self):
        return {
            "num_pages": self.P,
            "page_size": self.S,
            "free": len(self.free_list),
            "used": sum(rc > 0 for rc in self.refcount),
            "shared": sum(rc > 1 for rc in self.refcount),
            "cached": len(self.entry),
            "evictable": len(self.lru),
            "prefix_queries": self.queries,
            "prefix_hits": self.hits,
            "num_seqs": len(self.seqs),
            "peak_used": self.peak_used,
        }

    # ------------------------------------------------------------------------ internals -----

    def _save(self):
        saved = {k: copy.copy(v) for k, v in self.__dict__.items() if k != "_keys"}
        saved["seqs"] = {k: _Seq(list(s.pages), s.num_tokens, s.chain_ok, s.chain_key, s.chain_uid, list(s.tail))
                         for k, s in self.seqs.items()}
        return saved

    def _transaction(self, op):
        saved = self._save()
        try:
            return op()
        except _OutOfPages:
            self.__dict__.update(saved)
            raise PoolFull("the page pool cannot satisfy the request") from None

    def _succeeds(self, op):
        saved = self._save()
        try:
            op()
            return True
        except PoolFull:
            return False
        finally:
            self.__dict__.update(saved)

    def _allocate(self, tokens):
        seq = self._new_seq()
        s = self.seqs[seq] = _Seq(chain_ok=self.prefix_cache)
        S = self.S
        if self.prefix_cache:
            # Only pages entirely inside tokens[:-1] may hit: the last token must be computed.
            for i in range((len(tokens) - 1) // S):
                key = self._key(s.chain_key, tokens[i * S:(i + 1) * S])
                self.queries += 1
                page = self.cache.get(key)
                if page is None or self.entry[page][2] != s.chain_uid:
                    break
                self.hits += 1
                self._add_ref(page)
                s.pages.append(page)
                s.chain_key, s.chain_uid = key, self.entry[page][1]
        cached = len(s.pages) * S
        s.num_tokens = cached
        slots = self._extend(s, tokens[cached:], len(tokens) - cached, [], [])
        return seq, cached, slots

    def _append(self, seqs, counts, tokens):
        slots, src, dst, at = [], [], [], 0
        for seq, c in zip(seqs, counts):
            part = None if tokens is None else tokens[at:at + c]
            slots += self._extend(self.seqs[seq], part, c, src, dst)
            at += c
        return slots, src, dst

    def _extend(self, s, tokens, count, src, dst):
        if count == 0:
            return []
        S = self.S
        if s.num_tokens % S and self.refcount[s.pages[-1]] > 1:
            old, new = s.pages[-1], self._take()
            self._release(old)
            src.append(old)
            dst.append(new)
            s.pages[-1] = new
        if tokens is None:
            s.chain_ok, s.tail = False, []
        slots = []
        for i in range(count):
            t = s.num_tokens + i
            if t % S == 0:
                s.pages.append(self._take())
            slots.append(s.pages[t // S] * S + t % S)
            if tokens is not None and s.chain_ok:
                s.tail.append(tokens[i])
                if t % S == S - 1:
                    self._register(s, s.pages[t // S])
                    s.tail = []
        s.num_tokens += count
        return slots

    def _register(self, s, page):
        key = self._key(s.chain_key, s.tail)
        existing = self.cache.get(key)
        if existing is not None:
            if self.entry[existing][2] == s.chain_uid:  # same content already cached
                s.chain_key, s.chain_uid = key, self.entry[existing][1]
                return
            self._uncache(existing)
        self.cache[key] = page
        self.entry[page] = (key, self.next_uid, s.chain_uid)
        s.chain_key, s.chain_uid = key, self.next_uid
        self.next_uid += 1

    def _key(self, parent_key, page_tokens):
        return self._keys.setdefault((parent_key, tuple(page_tokens)), len(self._keys) + 1)

    def _new_seq(self):
        seq = self.next_seq
        self.next_seq += 1
        self.seqs[seq] = _Seq()
        return seq

    def _live(self, seq):
        if seq not in self.seqs:
            raise ValueError(f"seq {seq} is unknown or freed")
        return self.seqs[seq]

    def _take(self):
        if self.free_list:
            page = self.free_list.pop()
        elif self.lru:
            page = self.lru.pop(0)
            self._forget(page)
        else:
            raise _OutOfPages
        self.refcount[page] = 1
        self.peak_used = max(self.peak_used, sum(rc > 0 for rc in self.refcount))
        return page

    def _add_ref(self, page):
        if self.refcount[page] == 0:
            self.lru.remove(page)
        self.refcount[page] += 1
        self.peak_used = max(self.peak_used, sum(rc > 0 for rc in self.refcount))

    def _release(self, page):
        self.refcount[page] -= 1
        if self.refcount[page] == 0:
            (self.lru if page in self.entry else self.free_list).append(page)

    def _forget(self, page):
        key = self.entry.pop(page)[0]
        del self.cache[key]

    def _uncache(self, page):
        self._forget(page)
        if self.refcount[page] == 0:
            self.lru.remove(page)
            self.free_list.append(page)
