"""Argument checks and tuning constants of :class:`ponder.kv_store.KVStore` (kept apart so the
store reads as its operations)."""

from __future__ import annotations

from typing import Callable, FrozenSet, Iterable

import numpy as np

# (engine, pages needed) -> sequence handles whose KV may be dropped, most expendable first
EvictFn = Callable[[object, int], Iterable[int]]  # (the KVStore, pages needed) -> handles


DECODE_ATTENTION = ("shared_prefix", "paged")
# A decode step reads shared segments once only when that saves at least this many token reads
# per layer over reading every branch's whole KV: below it the plan's per-item overhead wins
# (measured: Countdown's ~50-token, 12-branch steps cost 5.15 s of CPU through the plan vs 4.37 s
# per branch; a 1,024-token prompt with 32 branches, 31,000 tokens saved per step, is far faster
# through the plan).
SHARED_PREFIX_MIN_SAVING = 4096


MAX_PAGES = 2**31 - 1  # PageTable page ids are int32


def _not_int(x) -> bool:
    return isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer))


def check_evict(evict, name: str = "evict") -> None:
    """TypeError unless ``evict`` is None or callable: it is only called under memory pressure,
    so a wrong value would otherwise surface much later, mid-call."""
    if evict is not None and not callable(evict):
        raise TypeError(f"{name} must be callable (engine, pages needed) -> handles, got {type(evict).__name__}")


def int_list(name: str, values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must be a 1-D sequence of ints, got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


def store_size(model, page_size, num_pages, max_kv_bytes, max_batch_tokens) -> int:
    """The page pool size, checked before the KV tensor is allocated."""
    for name in ("kv_bytes_per_token", "config", "allocate_kv_cache"):
        if not hasattr(model, name):
            raise TypeError(f"model must be a ponder.models.DecoderLM (or have its interface), "
                            f"got {type(model).__name__} without {name!r}")
    if _not_int(page_size) or page_size < 1:
        raise ValueError(f"page_size must be an int >= 1, got {page_size!r}")
    bytes_per_page = model.kv_bytes_per_token * page_size
    if num_pages is None:
        if max_kv_bytes is None:
            raise ValueError("give num_pages or max_kv_bytes to size the KV cache")
        if _not_int(max_kv_bytes) or max_kv_bytes < 1:
            raise ValueError(f"max_kv_bytes must be an int >= 1 (bytes), got {max_kv_bytes!r}")
        num_pages = int(max_kv_bytes) // bytes_per_page
    # checked before the KV tensor is allocated; the page table holds int32 page ids
    if _not_int(num_pages) or not 1 <= num_pages <= MAX_PAGES:
        raise ValueError(f"num_pages must be an int in [1, {MAX_PAGES}] (max_kv_bytes too small or too "
                         f"large?), got {num_pages!r}")
    if _not_int(max_batch_tokens) or max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be an int >= 1, got {max_batch_tokens!r}")
    return int(num_pages)


def eos_ids(cfg, eos_token_ids, vocab_size: int) -> FrozenSet[int]:
    """The EOS token ids: ``eos_token_ids`` checked, or the model config's."""
    if eos_token_ids is None:
        eos = getattr(cfg, "eos_token_id", None)
        eos_token_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    elif isinstance(eos_token_ids, (str, bytes)) or not hasattr(eos_token_ids, "__iter__"):
        raise TypeError(f"eos_token_ids must be a list of token ids or None, got {type(eos_token_ids).__name__}")
    for t in eos_token_ids:
        if _not_int(t) or not 0 <= t < vocab_size:
            raise ValueError(f"eos_token_ids must hold token ids in [0, {vocab_size}), got {t!r}")
    return frozenset(int(t) for t in eos_token_ids)
