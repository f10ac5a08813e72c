"""Paged KV bookkeeping: which pages of the KV pool each sequence (search branch) uses.

The KV data is one tensor ``[L, 2, P, S, Hk, D]`` owned by the model runner; a :class:`PageTable`
only hands out page ids. A sequence is an ``int`` handle holding a list of pages and a token
count; token ``t`` of a sequence lives at slot ``pages[t // S] * S + t % S`` of the flattened
``[P * S]`` token axis. Handles are never reused, so using a freed handle always raises.

Example with ``P=8, S=4`` (pages are handed out in ascending order while the pool is fresh)::

    pt = PageTable(8, 4)
    a, cached, slots = pt.allocate([5, 6, 7, 8, 9, 10])   # a=0, cached=0, slots=[0 1 2 3 4 5]
    b = pt.fork(a)                                          # b shares pages [0, 1]
    slots, src, dst = pt.append([a, b], [1, 1], [11, 12])
    # page 1 was partial and shared: a copies it to page 2 first (src=[1], dst=[2]) and writes
    # slot 10; b, now the only holder of page 1, writes slot 6 in place -> slots=[10 6]

Forking is a refcount increment; appending into a shared, partially filled last page first moves
the sequence to a fresh page and reports the ``(old, new)`` pair, which the caller copies with
:func:`ponder.ops.copy_pages` before writing K/V. Freeing drops references; a page whose count
reaches zero returns to the pool. ``fork_many`` / ``free_many`` do either for a whole batch of
sequences in one call.

Prefix cache (``prefix_cache=True``): every full page whose tokens are known is registered under a
chained hash (hash of the previous page's hash and this page's token ids). ``allocate`` reuses
registered pages for the longest cached prefix of its tokens, except that the last token is never
served from cache (its logits are needed), so only pages entirely inside ``tokens[:-1]`` can hit.
Unreferenced registered pages stay reusable until evicted, least recently released first. Each
cached page keeps its token ids and its parent's identity, so a hash collision costs a miss, never
a wrong page. Pages appended without ``tokens`` (``append(..., tokens=None)``) make that sequence
uncacheable from its current page on; forks of it inherit that.

Every mutating call is all-or-nothing: bad input raises ``ValueError`` / ``TypeError`` /
``IndexError`` and a pool that cannot satisfy the whole request raises :class:`KVCacheFull`,
both before any state changes.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np

from ponder import _core

KVCacheFull = _core.KVCacheFull

__all__ = ["DecodeStep", "KVCacheFull", "PageTable"]

_INT32 = np.dtype(np.int32)
_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1


def _int32_array(name: str, value: Any) -> np.ndarray:
    """``value`` as a 1-D C-contiguous int32 array; integer arrays of other widths are range-checked."""
    arr = value
    if not isinstance(arr, np.ndarray):
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name} must be a 1-D sequence of integers, got {type(value).__name__}") from e
        if arr.ndim == 1 and arr.size == 0:
            arr = arr.astype(_INT32)  # an empty list comes back as float64
    if arr.ndim != 1:
        raise TypeError(f"{name} must be 1-D, got shape {tuple(arr.shape)}")
    if arr.dtype != _INT32:
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
        if arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < _I32_MIN or hi > _I32_MAX:
                raise ValueError(f"{name} values must fit in int32, got values in [{lo}, {hi}]")
        return arr.astype(_INT32)
    if not arr.flags.c_contiguous:
        return np.ascontiguousarray(arr)
    return arr


def _int(name: str, value: Any, lo: int = _I32_MIN, hi: int = _I32_MAX) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    v = int(value)
    if not lo <= v <= hi:
        raise ValueError(f"{name}={v} is out of range [{lo}, {hi}]")
    return v


class DecodeStep(NamedTuple):
    """What :meth:`PageTable.decode_step` returns for B sequences."""

    positions: np.ndarray  # int64 [B]: the position of each appended token
    slot_mapping: np.ndarray  # int64 [B]: where its K/V go (page * S + offset)
    copy_src: np.ndarray  # int32 [C]: copy-on-write pages to copy before the forward ...
    copy_dst: np.ndarray  # int32 [C]: ... onto these
    block_tables: np.ndarray  # int32 [B, W], padded with 0
    seq_lens: np.ndarray  # int32 [B]: tokens in each sequence's KV, the new one included
    plan: Optional[dict]  # the attention plan's arrays (AttentionPlan.from_native), or None


class PageTable:
    """Page ids, refcounts, fork / copy-on-write and a prefix cache for a pool of ``num_pages``
    KV pages of ``page_size`` tokens each.

    ``hash_bits`` keeps only the low bits of each page hash; leave it at 64. Smaller values force
    hash collisions, which exercises the token verification that makes them harmless.
    """

    def __init__(self, num_pages: int, page_size: int, prefix_cache: bool = True, *, hash_bits: int = 64):
        num_pages = _int("num_pages", num_pages, lo=1)
        page_size = _int("page_size", page_size, lo=1)
        hash_bits = _int("hash_bits", hash_bits, lo=0, hi=64)
        if not isinstance(prefix_cache, (bool, np.bool_)):  # "no" would switch the cache on
            raise TypeError(f"prefix_cache must be a bool, got {type(prefix_cache).__name__} {prefix_cache!r}")
        self._t = _core.PageTable(num_pages, page_size, bool(prefix_cache), hash_bits)

    @property
    def num_pages(self) -> int:
        """P, pages in the pool."""
        return self._t.num_pages

    @property
    def page_size(self) -> int:
        """S, tokens per page."""
        return self._t.page_size

    @property
    def prefix_cache(self) -> bool:
        return self._t.prefix_cache

    def allocate(self, tokens) -> tuple[int, int, np.ndarray]:
        """Start a sequence holding ``tokens`` (``[n]`` non-negative ids, ``n >= 1``).

        Returns ``(seq, num_cached, slot_mapping)``: the new handle, how many leading tokens were
        served from the prefix cache (a multiple of S, at most ``n - 1``), and the int64 slots
        ``[n - num_cached]`` where the caller writes K/V of ``tokens[num_cached:]``.
        Raises :class:`KVCacheFull` when the fresh pages cannot be found.
        """
        return self._t.allocate(_int32_array("tokens", tokens))

    def fork(self, seq: int) -> int:
        """A new sequence sharing every page of ``seq`` (same tokens). Never allocates."""
        return self._t.fork(seq)  # the native layer checks scalar handles

    def fork_many(self, seqs) -> np.ndarray:
        """``int32[M]`` children, child i forked off ``seqs[i]`` (a handle may repeat). One call
        for a whole search expansion; all handles are checked before any child is made."""
        return self._t.fork_many(_int32_array("seqs", seqs))

    def append(self, seqs, counts, tokens=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reserve ``counts[i]`` new token slots at the end of ``seqs[i]`` for every i, in order.

        seqs, counts: ``[M]`` ints, seqs distinct and live, counts >= 0 (0 is a no-op).
        tokens: ``[sum(counts)]`` ids of the appended tokens, concatenated in the order of
        ``seqs``, or ``None`` (then the touched sequences stop feeding the prefix cache).

        Returns ``(slot_mapping int64[sum(counts)], copy_src int32[C], copy_dst int32[C])``.
        Run ``ops.copy_pages(kv, copy_src, copy_dst)`` before writing K/V into the slots.
        """
        seqs = _int32_array("seqs", seqs)
        counts = _int32_array("counts", counts)
        if tokens is not None:
            tokens = _int32_array("tokens", tokens)
        return self._t.append(seqs, counts, tokens)

    def free(self, seq: int) -> None:
        """Release ``seq``; freeing it again raises ``ValueError``."""
        self._t.free(seq)

    def free_many(self, seqs) -> None:
        """Free every handle in ``seqs`` (live and distinct), all-or-nothing."""
        self._t.free_many(_int32_array("seqs", seqs))

    def can_allocate(self, tokens) -> bool:
        """Whether :meth:`allocate` would find its pages. Given an int (a token count), assumes no
        prefix hit, which is a safe bound; given the token ids, it is exact."""
        if isinstance(tokens, (int, np.integer)) and not isinstance(tokens, (bool, np.bool_)):
            return self._t.can_allocate(_int("n_tokens", tokens, lo=1, hi=2**62))
        return self._t.can_allocate_tokens(_int32_array("tokens", tokens))

    def can_append(self, seqs, counts) -> bool:
        """Whether :meth:`append` with these arguments would find its pages (exact)."""
        return self._t.can_append(_int32_array("seqs", seqs), _int32_array("counts", counts))

    def batch_tables(self, seqs, pad: int = -1, max_pages: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Block tables ``int32[B, W]`` (row i: pages of ``seqs[i]``, then ``pad``) and token counts
        ``int32[B]``. W is the longest page list, or ``max_pages`` when given (fixed shapes for
        CUDA graphs; must cover the longest list)."""
        pad = _int("pad", pad)
        width = -1 if max_pages is None else _int("max_pages", max_pages, lo=0, hi=2**62)
        return self._t.batch_tables(_int32_array("seqs", seqs), pad, width)

    def decode_step(self, seqs, tokens, plan_min_saving: int = -1, max_pages_per_item: int = 0,
                    max_queries_per_item: int = 0) -> DecodeStep:
        """Everything one decode forward needs, in one native call: append ``tokens[i]`` to
        ``seqs[i]`` (one slot each, copy-on-write as in :meth:`append`; all-or-nothing, raising
        :class:`KVCacheFull` with nothing changed), then the step's positions, block tables (padded
        with 0) and lengths, and its shared-prefix attention plan when sharing saves at least
        ``plan_min_saving`` token reads (sum of lengths minus distinct pages times page size;
        ``< 0`` never plans). ``max_pages_per_item`` / ``max_queries_per_item`` shape the plan's
        items as in :func:`ponder.attention_plan.plan_attention`."""
        raw = self._t.decode_step(_int32_array("seqs", seqs), _int32_array("tokens", tokens),
                                  _int("plan_min_saving", plan_min_saving, lo=-(2**62), hi=2**62),
                                  _int("max_pages_per_item", max_pages_per_item, lo=0),
                                  _int("max_queries_per_item", max_queries_per_item, lo=0))
        return DecodeStep(*raw)

    def num_tokens(self, seq: int) -> int:
        return self._t.num_tokens(seq)

    def pages(self, seq: int) -> np.ndarray:
        """Page ids of ``seq``, ``int32[ceil(num_tokens / S)]`` (a copy)."""
        return self._t.pages(seq)

    def refcount(self, page: int) -> int:
        return self._t.refcount(page)

    def refcounts(self) -> np.ndarray:
        """Reference counts of all pages, ``int32[P]`` (a copy)."""
        return self._t.refcounts()

    def is_cached(self, page: int) -> bool:
        """Whether ``page`` is registered in the prefix cache."""
        return self._t.is_cached(page)

    def slot_of(self, seq: int, t: int) -> int:
        """Slot of token ``t`` of ``seq``: ``pages[t // S] * S + t % S``."""
        return self._t.slot_of(seq, t)

    def free_pages(self) -> np.ndarray:
        """Pages on the free list, the next one to be handed out first."""
        return self._t.free_pages()

    def evictable_pages(self) -> np.ndarray:
        """Cached pages with refcount 0, the next one to be evicted first."""
        return self._t.evictable_pages()

    def live_seqs(self) -> np.ndarray:
        """Handles of all live sequences, ascending."""
        return self._t.live_seqs()

    def stats(self) -> dict[str, int]:
        """Counters: ``num_pages``, ``page_size``, ``free``, ``used`` (refcount > 0), ``shared``
        (refcount > 1), ``cached`` (registered in the prefix cache), ``evictable`` (cached and
        unreferenced), ``prefix_queries`` / ``prefix_hits`` (pages looked up / reused by
        allocate), ``num_seqs`` (live), ``peak_used``. ``free + used + evictable == num_pages``."""
        return self._t.stats()

    def kv_bytes(self, bytes_per_token: int) -> int:
        """KV bytes held by referenced pages, for a cache storing ``bytes_per_token`` per token
        (``2 * L * Hk * D * itemsize``)."""
        bytes_per_token = _int("bytes_per_token", bytes_per_token, lo=0, hi=2**62)
        return self._t.stats()["used"] * self.page_size * bytes_per_token

    def __repr__(self) -> str:
        st = self._t.stats()
        return (
            f"PageTable(num_pages={st['num_pages']}, page_size={st['page_size']}, "
            f"prefix_cache={self.prefix_cache}, used={st['used']}, free={st['free']}, "
            f"evictable={st['evictable']}, num_seqs={st['num_seqs']})"
        )
