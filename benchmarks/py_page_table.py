"""A straightforward plain-Python page table with ponder.page_table.PageTable's semantics.

The baseline for benchmarks/bench_page_table.py: the block manager a Python serving engine would
write (lists, dicts, an OrderedDict as the LRU), with the same page order, copy-on-write rule,
verified chained prefix cache and all-or-nothing capacity check, so both implementations return
identical slot mappings for the same calls. Validation is minimal; inputs are Python lists.
"""

from __future__ import annotations

from collections import OrderedDict


class PoolFull(RuntimeError):
    pass


class _Seq:
    __slots__ = ("pages", "num_tokens", "chain_ok", "chain_hash", "chain_uid", "tail")

    def __init__(self, pages, num_tokens, chain_ok, chain_hash, chain_uid, tail):
        self.pages, self.num_tokens, self.chain_ok = pages, num_tokens, chain_ok
        self.chain_hash, self.chain_uid, self.tail = chain_hash, chain_uid, tail


_ROOT = 0x6A09E667


class PyPageTable:
    def __init__(self, num_pages: int, page_size: int, prefix_cache: bool = True):
        self.S = page_size
        self.prefix_cache = prefix_cache
        self.refcount = [0] * num_pages
        self.free_list = list(range(num_pages - 1, -1, -1))
        self.lru = OrderedDict()  # evictable cached pages, oldest release first
        self.cache = {}  # chain hash -> page
        self.meta = {}  # cached page -> (hash, uid, parent uid, tokens)
        self.next_uid = 1
        self.seqs = {}
        self.next_seq = 0

    def _new_seq(self, s):
        seq = self.next_seq
        self.next_seq += 1
        self.seqs[seq] = s
        return seq

    def _take(self):
        if self.free_list:
            page = self.free_list.pop()
        else:
            page, _ = self.lru.popitem(last=False)
            del self.cache[self.meta.pop(page)[0]]
        self.refcount[page] = 1
        return page

    def _release(self, page):
        self.refcount[page] -= 1
        if self.refcount[page] == 0:
            if page in self.meta:
                self.lru[page] = None
            else:
                self.free_list.append(page)

    def _match(self, tokens):
        S, hits, h, uid = self.S, [], _ROOT, 0
        if self.prefix_cache:
            for i in range((len(tokens) - 1) // S):
                page_tokens = tuple(tokens[i * S:(i + 1) * S])
                h = hash((h, page_tokens))
                page = self.cache.get(h)
                if page is None:
                    break
                _, page_uid, parent_uid, cached_tokens = self.meta[page]
                if parent_uid != uid or cached_tokens != page_tokens:
                    break
                hits.append(page)
                uid = page_uid
        return hits

    def allocate(self, tokens):
        S = self.S
        hits = self._match(tokens)
        need = -(-len(tokens) // S) - len(hits)
        evictable_hits = sum(1 for p in hits if self.refcount[p] == 0)
        if need > len(self.free_list) + len(self.lru) - evictable_hits:
            raise PoolFull(f"allocate needs {need} pages")
        s = _Seq([], 0, self.prefix_cache, _ROOT, 0, [])
        for page in hits:
            if self.refcount[page] == 0:
                del self.lru[page]
            self.refcount[page] += 1
            s.pages.append(page)
            s.chain_hash, s.chain_uid = self.meta[page][0], self.meta[page][1]
        cached = len(hits) * S
        s.num_tokens = cached
        seq = self._new_seq(s)
        return seq, cached, self._extend(s, tokens[cached:], len(tokens) - cached, None, None)

    def fork(self, seq):
        p = self.seqs[seq]
        for page in p.pages:
            self.refcount[page] += 1
        return self._new_seq(_Seq(list(p.pages), p.num_tokens, p.chain_ok, p.chain_hash, p.chain_uid, list(p.tail)))

    def fork_many(self, seqs):
        return [self.fork(s) for s in seqs]

    def append(self, seqs, counts, tokens=None):
        S, need, dropped = self.S, 0, {}
        for seq, c in zip(seqs, counts):
            if c:
                s = self.seqs[seq]
                n = s.num_tokens
                need += -(-(n + c) // S) - (-(-n // S))
                if n % S:
                    last = s.pages[-1]
                    if self.refcount[last] - dropped.get(last, 0) > 1:
                        need += 1
                        dropped[last] = dropped.get(last, 0) + 1
        if need > len(self.free_list) + len(self.lru):
            raise PoolFull(f"append needs {need} pages")
        slots, src, dst, at = [], [], [], 0
        for seq, c in zip(seqs, counts):
            part = None if tokens is None else tokens[at:at + c]
            slots += self._extend(self.seqs[seq], part, c, src, dst)
            at += c
        return slots, src, dst

    def free(self, seq):
        s = self.seqs.pop(seq)
        for page in reversed(s.pages):
            self._release(page)

    def free_many(self, seqs):
        for s in seqs:
            self.free(s)

    def _extend(self, s, tokens, count, src, dst):
        if count == 0:
            return []
        S, n = self.S, s.num_tokens
        if n % S and self.refcount[s.pages[-1]] > 1:
            old, new = s.pages[-1], self._take()
            self._release(old)
            src.append(old)
            dst.append(new)
            s.pages[-1] = new
        if tokens is None:
            s.chain_ok, s.tail = False, []
        record = tokens is not None and s.chain_ok
        slots = []
        for i in range(count):
            t = n + i
            off = t % S
            if off == 0:
                s.pages.append(self._take())
            page = s.pages[-1]
            slots.append(page * S + off)
            if record:
                s.tail.append(tokens[i])
                if off == S - 1:
                    self._register(s, page)
                    s.tail = []
        s.num_tokens = n + count
        return slots

    def _register(self, s, page):
        page_tokens = tuple(s.tail)
        h = hash((s.chain_hash, page_tokens))
        existing = self.cache.get(h)
        if existing is not None:
            _, uid, parent_uid, cached_tokens = self.meta[existing]
            if parent_uid == s.chain_uid and cached_tokens == page_tokens:
                s.chain_hash, s.chain_uid = h, uid
                return
            del self.meta[existing]
            if self.refcount[existing] == 0:
                del self.lru[existing]
                self.free_list.append(existing)
        self.cache[h] = page
        self.meta[page] = (h, self.next_uid, s.chain_uid, page_tokens)
        s.chain_hash, s.chain_uid = h, self.next_uid
        self.next_uid += 1

    def stats(self):
        used = sum(1 for rc in self.refcount if rc)
        return {"free": len(self.free_list), "used": used, "evictable": len(self.lru), "cached": len(self.meta),
                "num_seqs": len(self.seqs)}
