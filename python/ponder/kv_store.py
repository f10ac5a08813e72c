"""One model's KV cache as sequences: the tensor, its PageTable and a record per sequence.

:class:`KVStore` speaks in sequence handles (ints). ``prefill`` turns prompts into sequences,
``decode`` feeds one token to each of many sequences in one forward, ``extend`` /
``score_continuations`` teacher-force given tokens, ``fork`` / ``free`` / ``evict`` manage them.
Every forward of the project that reads or writes paged KV goes through ``append_forward`` or
the prefill here. :class:`ponder.Engine` adds sampled step expansion on top.

A sequence keeps the hidden state of its last token. When the page pool is full the store
evicts the KV of other sequences (the call's ``evict`` ranking first, then the store's, then
least recently used); an evicted sequence keeps its tokens and hidden state and is re-prefilled
when it is next extended, with the prefix cache picking up whatever pages survived.
"""

from __future__ import annotations

import inspect
import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ponder import ops
from ponder.attention_plan import AttentionPlan
from ponder.expansion import EngineStats
from ponder.kv_args import (DECODE_ATTENTION, SHARED_PREFIX_MIN_SAVING, EvictFn, check_evict, eos_ids, int_list,
                            store_size)
from ponder.page_table import KVCacheFull, PageTable
from ponder.sequences import NO_PAGES, SeqRecord, SeqTable

__all__ = ["EvictFn", "KVStore", "int_list"]

logger = logging.getLogger(__name__)

def _takes_row_groups(model) -> bool:
    """Whether ``model.forward`` has a ``row_groups`` parameter."""
    try:
        return "row_groups" in inspect.signature(model.forward).parameters
    except (AttributeError, TypeError, ValueError):  # no forward, or one inspect cannot read
        return False


def rows_apart(hidden: torch.Tensor, kv_cache: torch.Tensor, slots: np.ndarray,
               row_groups: Tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The rows of a decode step whose results differ in any bit from their
    group's first row: the hidden state ``hidden [T, C]``, or the K/V any layer wrote at the
    row's slot (``slots [T]`` into ``kv_cache [L, 2, P, S, Hk, D]``). ``row_groups`` is
    ``(firsts [U], groups [T])``. Returns sorted row indices (int64), never a first row."""
    firsts, groups = row_groups
    dev = hidden.device
    lead = torch.from_numpy(firsts[groups]).to(dev)  # [T] each row's group's first row
    differ = (hidden != hidden[lead]).any(dim=1)  # [T]; NaN counts as different
    L, two, P, S = kv_cache.shape[:4]
    written = kv_cache.reshape(L, two, P * S, -1)[:, :, torch.from_numpy(np.asarray(slots, np.int64)).to(dev)]
    differ |= (written != written[:, :, lead]).any(dim=3).any(dim=1).any(dim=0)
    differ[torch.from_numpy(firsts).to(dev)] = False  # a first row stays (even a NaN one)
    return np.flatnonzero(differ.cpu().numpy()).astype(np.int64)


def split_by_items(plan: AttentionPlan, row_groups: Tuple[np.ndarray, np.ndarray]
                   ) -> Tuple[Tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Row groups of a decode step refined by the attention plan: a row whose items' token
    counts (:meth:`AttentionPlan.item_tokens_by_query`) differ from its group's first row's
    would go through other arithmetic, so it becomes a group of its own. Returns the new
    ``(firsts, groups)`` and the rows that left their groups."""
    firsts, groups = row_groups
    sig = plan.item_tokens_by_query()
    apart = (sig != sig[firsts[groups]]).any(axis=1)
    apart[firsts] = False
    idx = np.flatnonzero(apart).astype(np.int64)
    if idx.size:
        groups = groups.copy()
        groups[idx] = firsts.size + np.arange(idx.size)
        firsts = np.concatenate([firsts, idx])
    return (firsts, groups), idx


def _distinct_count(values: np.ndarray) -> int:
    """How many distinct values ``values`` holds (``np.unique(values).size`` without its first
    call importing numpy.ma, 0.1 s)."""
    if values.size == 0:
        return 0
    v = np.sort(values, axis=None)
    return int(np.count_nonzero(v[1:] != v[:-1])) + 1


class KVStore:
    """Owns one model's KV cache, its PageTable and the sequence records.

    Args:
        model: a :class:`ponder.models.DecoderLM` (or anything with its forward / logits /
            value / allocate_kv_cache interface).
        tokenizer: anything with ``decode(list[int]) -> str`` (and ``encode`` for str prompts);
            needed for stop strings.
        num_pages: size of the KV page pool; or give ``max_kv_bytes`` and let the engine derive it.
        page_size: tokens per KV page (S).
        prefix_cache: reuse full pages across prompts by chained token hash.
        eos_token_ids: tokens that end a step and make it terminal (default: the model config's).
        max_batch_tokens: prefill rows per forward (longer batches are chunked by prompt).
        evict: ``evict(engine, num_pages_needed) -> handles`` whose KV may be dropped under
            memory pressure, most expendable first; a call's own ``evict=`` is asked first, this
            second, then least recently used sequences go.
        backend: op backend for the engine's ops (``"auto"`` | ``"torch"`` | ...).
        chat_template: str prompts go through the tokenizer's chat template (one user message,
            generation prompt added) when it has one; False encodes them as plain text.
        decode_attention: ``"shared_prefix"`` (default): a decode step whose sequences share
            enough KV (``SHARED_PREFIX_MIN_SAVING`` token reads) builds one attention plan for the
            batch and every layer reads each shared segment once (``ops.shared_prefix_attention``);
            ``"paged"``: every sequence always reads its whole KV (``ops.paged_attention``).
        dedup_rows: in a decode step of ``Engine.expand``, rows that are sure to give the same
            result (siblings that have drawn the same tokens so far: same token, position and
            cached context) run the model and the LM head once per group
            (``DecoderLM.forward(row_groups=...)``); every row still writes its own KV and
            samples with its own key, so for fp32 weights on the CPU (whose linears give a row
            the same bits in any batch) results are the same bits either way; with bf16 / fp16
            weights or on a GPU they differ at most as any change of batch can. Through a
            shared-prefix plan, rows whose attention could round apart leave their groups (see
            ``decode_forward``). None (default): on when the model's
            ``forward`` takes ``row_groups``; True requires that.
    """

    def __init__(self, model, tokenizer=None, *, num_pages: Optional[int] = None, page_size: int = 16,
                 max_kv_bytes: Optional[int] = None, prefix_cache: bool = True,
                 eos_token_ids: Optional[Sequence[int]] = None, max_batch_tokens: int = 4096,
                 evict: Optional[EvictFn] = None, backend: str = "auto", decode_attention: str = "shared_prefix",
                 chat_template: bool = True, dedup_rows: Optional[bool] = None):
        for name in ("kv_bytes_per_token", "config", "allocate_kv_cache"):
            if not hasattr(model, name):
                raise TypeError(f"model must be a ponder.models.DecoderLM (or have its interface), "
                                f"got {type(model).__name__} without {name!r}")
        num_pages = store_size(model, page_size, num_pages, max_kv_bytes, max_batch_tokens)
        check_evict(evict, "evict")
        if decode_attention not in DECODE_ATTENTION:
            raise ValueError(f"decode_attention must be one of {DECODE_ATTENTION}, got {decode_attention!r}")
        ops.resolve_backend(backend)  # validates the name now rather than mid-search
        takes_groups = _takes_row_groups(model)
        if dedup_rows is not None and not isinstance(dedup_rows, (bool, np.bool_)):
            raise TypeError(f"dedup_rows must be None, True or False, got {dedup_rows!r}")
        if dedup_rows and not takes_groups:
            raise TypeError(f"dedup_rows=True needs a model whose forward takes row_groups (like "
                            f"ponder.models.DecoderLM); {type(model).__name__}.forward does not")
        self.dedup_rows = takes_groups if dedup_rows is None else bool(dedup_rows)
        self.decode_attention = decode_attention
        self.chat_template = bool(chat_template)
        self.model, self.tokenizer, self.page_size = model, tokenizer, page_size
        self.num_pages, self.backend, self.max_batch_tokens = int(num_pages), backend, max_batch_tokens
        self.evict_fn = evict
        cfg = model.config
        self.max_context = int(cfg.max_position_embeddings)
        self.vocab_size = int(cfg.vocab_size)
        self.eos_token_ids = eos_ids(cfg, eos_token_ids, self.vocab_size)
        self.kv_cache = model.allocate_kv_cache(self.num_pages, page_size)
        self.device = self.kv_cache.device
        self.page_table = PageTable(self.num_pages, page_size, prefix_cache=prefix_cache)
        self.stats = EngineStats()
        self.seqs = SeqTable()
        self.protected: set = set()  # handles whose KV this call needs (never evicted meanwhile)
        self._plan_options: Optional[dict] = None  # attention-plan item shapes for the backend
        self.last_decode_apart: Optional[np.ndarray] = None  # see decode_forward

    # ---------------------------------------------------------------- accounting
    @property
    def kv_bytes_per_page(self) -> int:
        return int(self.model.kv_bytes_per_token * self.page_size)

    @property
    def num_sequences(self) -> int:
        """Live sequence handles (resident or evicted)."""
        return len(self.seqs)

    def kv_stats(self) -> Dict[str, int]:
        """Pages in use / peak, prefix-cache hits, tokens prefilled vs decoded, KV bytes."""
        st = dict(self.page_table.stats())
        st.update(pages_peak=self.stats.pages_peak, kv_bytes_in_use=st["used"] * self.kv_bytes_per_page,
                  kv_bytes_peak=self.stats.pages_peak * self.kv_bytes_per_page,
                  tokens_prefilled=self.stats.tokens_prefilled, tokens_decoded=self.stats.tokens_decoded,
                  model_calls=self.stats.model_calls, evicted_sequences=self.stats.evicted_sequences,
                  reprefilled_sequences=self.stats.reprefilled_sequences)
        return st

    def _note_usage(self) -> None:
        self.stats.pages_peak = max(self.stats.pages_peak, int(self.page_table.stats()["used"]))

    # ---------------------------------------------------------------- sequences
    def handles(self) -> np.ndarray:
        """int64: every live sequence handle (resident or evicted), in creation order."""
        return np.asarray(self.seqs.handles(), dtype=np.int64)

    def tokens(self, seq: int) -> np.ndarray:
        """int32 [n]: every token of sequence ``seq`` (the prompt first)."""
        return self.seqs.get(seq, "seq").path_tokens()

    def num_tokens(self, seq: int) -> int:
        return self.seqs.get(seq, "seq").length

    def has_kv(self, seqs: Sequence[int]) -> np.ndarray:
        """bool [M]: whether each sequence's KV is resident (False once evicted)."""
        return np.array([r.pages != NO_PAGES for r in self.seqs.lookup(int_list("seqs", seqs))], dtype=bool)

    def hidden(self, seqs: Sequence[int]) -> torch.Tensor:
        """[M, hidden_size]: the hidden state at each sequence's last token."""
        recs = self.seqs.lookup(int_list("seqs", seqs))
        if not recs:
            return torch.empty(0, self.model.config.hidden_size, device=self.device)
        return torch.stack([r.hidden[0][r.hidden[1]] for r in recs])

    def distinct_pages(self, seqs: Sequence[int]) -> int:
        """Distinct KV pages held by the resident sequences among ``seqs`` together."""
        pages = [self.page_table.pages(r.pages) for r in self.seqs.lookup(int_list("seqs", seqs))
                 if r.pages != NO_PAGES]
        return _distinct_count(np.concatenate(pages)) if pages else 0

    def fork(self, seqs: Sequence[int]) -> np.ndarray:
        """int64 [M]: new sequences sharing every page (and the hidden state) of ``seqs[i]``;
        a handle may repeat. Evicted sequences are re-prefilled first."""
        recs = self.seqs.lookup(int_list("seqs", seqs))
        try:
            self.ensure_kv(recs, None)
        finally:
            self.protected.clear()
        out = []
        for r in recs:
            child = self.seqs.new(r, np.zeros(0, np.int32), self.page_table.fork(r.pages))
            child.hidden = r.hidden
            out.append(child.handle)
        self.seqs.touch(recs)
        return np.asarray(out, dtype=np.int64)

    def free(self, seqs: Sequence[int]) -> None:
        """Forget ``seqs`` (distinct, live): their KV pages return to the pool, their tokens go."""
        recs = self.seqs.lookup(int_list("seqs", seqs))
        if len({r.handle for r in recs}) != len(recs):
            raise ValueError("seqs has duplicates: free each handle once")
        for r in recs:
            if r.pages != NO_PAGES:
                self.page_table.free(r.pages)
            self.seqs.remove(r)

    def evict(self, seqs: Sequence[int]) -> int:
        """Drop the KV of ``seqs`` (their tokens and hidden states stay; they are re-prefilled
        when next extended). Sequences without KV are skipped. Returns how many were evicted."""
        recs = self.seqs.lookup(int_list("seqs", seqs))
        n = 0
        for r in recs:
            if r.pages != NO_PAGES:
                self.page_table.free(r.pages)
                r.pages = NO_PAGES
                n += 1
        self.stats.evicted_sequences += n
        return n

    # ---------------------------------------------------------------- memory pressure
    def _make_room(self, fits: Callable[[], bool], what: str, evict: Optional[EvictFn]) -> None:
        if fits():
            return
        for source, fn in (("evict", evict), ("Engine(evict=...)", self.evict_fn)):
            if fn is None:
                continue
            answer = fn(self, self._pages_short())
            if isinstance(answer, (str, bytes)) or not hasattr(answer, "__iter__"):
                raise TypeError(f"{source} must return sequence handles (an iterable of ints), "
                                f"got {type(answer).__name__}")
            for h in answer:
                rec = self.seqs.get(h, f"the handles returned by {source}")
                if rec.handle in self.protected or rec.pages == NO_PAGES:
                    continue
                self.evict([rec.handle])
                if fits():
                    return
        for rec in self.seqs.resident():
            if rec.handle not in self.protected:
                self.evict([rec.handle])
                if fits():
                    return
        st = self.page_table.stats()
        raise KVCacheFull(
            f"KV cache full while {what}: pool of {st['num_pages']} pages ({self.page_size} tokens each), "
            f"{st['free']} free, {st['evictable']} evictable cached, {st['used']} in use by live branches "
            f"and nothing left to evict; give the engine more num_pages / max_kv_bytes or expand fewer nodes"
        )

    def _pages_short(self) -> int:
        st = self.page_table.stats()
        return max(1, self.num_pages - st["free"] - st["evictable"])

    # ---------------------------------------------------------------- forward building blocks
    # ``seqs``, ``protected``, ``ensure_kv`` and ``append_forward`` are the pieces an engine
    # built on the store (``ponder.Engine``) composes; callers use the public API below them.
    def _forward(self, input_ids, positions, slots: np.ndarray, pages: Sequence[int], query_counts) -> torch.Tensor:
        tables, lens = self.page_table.batch_tables(np.asarray(pages, dtype=np.int32), pad=0)
        indptr = np.zeros(len(query_counts) + 1, dtype=np.int32)
        np.cumsum(query_counts, out=indptr[1:])
        plan = None
        if self.decode_attention == "shared_prefix" and indptr[-1] == len(query_counts):
            used = np.arange(tables.shape[1])[None, :] < ((lens + self.page_size - 1) // self.page_size)[:, None]
            if int(lens.sum()) - _distinct_count(tables[used]) * self.page_size >= SHARED_PREFIX_MIN_SAVING:
                plan = ops.plan_shared_prefix_attention(tables, lens, self.kv_cache, self.model.config.num_heads,
                                                        backend=self.backend)
        return self._run_model(input_ids, positions, slots, tables, lens, indptr, plan)

    def decode_forward(self, pages: np.ndarray, tokens: np.ndarray, what: str, evict: Optional[EvictFn],
                       row_groups: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> torch.Tensor:
        """Feed ``tokens[i]`` to page sequence ``pages[i]`` (distinct) in one forward; returns the
        hidden rows ``[B, C]``. One native call (``PageTable.decode_step``) appends the tokens and
        returns the step's positions, slots, copy-on-write list, block tables and attention plan.
        ``row_groups``: (firsts, groups) int64 arrays of rows known to give the same result
        (``DecoderLM.forward``); only given when ``dedup_rows`` is on. ``last_decode_apart`` is
        then None when the groups ran as groups throughout. In a step through an attention
        plan, a plan's items depend on the pages rows share, so equal rows can round
        differently: with the native CPU kernel (rows independent of each other), rows whose
        items differ from their first row's leave their groups first (:func:`split_by_items`)
        and the first rows attend through the plan cut down to them; otherwise every row
        attends, a row whose output differs goes on alone, and :func:`rows_apart` finds the
        rows whose hidden state or K/V came out different. ``last_decode_apart`` lists the rows
        that must leave their groups."""
        B = len(pages)
        min_saving = SHARED_PREFIX_MIN_SAVING if self.decode_attention == "shared_prefix" else -1
        if self._plan_options is None:
            self._plan_options = ops.plan_item_options(self.kv_cache, self.model.config.num_heads, self.backend)
        try:
            step = self.page_table.decode_step(pages, tokens, min_saving, **self._plan_options)
        except KVCacheFull:  # nothing was appended: make room, then the same call again
            self._make_room(lambda: self.page_table.can_append(pages, np.ones(B, dtype=np.int32)), what, evict)
            step = self.page_table.decode_step(pages, tokens, min_saving, **self._plan_options)
        if len(step.copy_src):
            ops.copy_pages(self.kv_cache, torch.from_numpy(step.copy_src).to(self.device),
                           torch.from_numpy(step.copy_dst).to(self.device), backend=self.backend)
        self._note_usage()
        plan_arrays = None if step.plan is None else AttentionPlan.from_native(step.plan, self.page_size)
        plan = None if plan_arrays is None else plan_arrays.to(self.device)
        args = (tokens, step.positions, step.slot_mapping, step.block_tables, step.seq_lens,
                np.arange(B + 1, dtype=np.int32))
        self.last_decode_apart = None
        if plan is None or row_groups is None:
            return self._run_model(*args, plan, row_groups)
        if self._native_plan_attention():
            # the native kernel's rows do not depend on each other: the first rows attend alone,
            # through the plan cut down to them, after rows whose items differ leave their groups
            row_groups, self.last_decode_apart = split_by_items(plan_arrays, row_groups)
            return self._run_model(*args, plan_arrays.for_queries(row_groups[0]).to(self.device), row_groups)
        hidden = self._run_model(*args, plan, row_groups)
        self.last_decode_apart = rows_apart(hidden, self.kv_cache, step.slot_mapping, row_groups)
        return hidden

    def _native_plan_attention(self) -> bool:
        """Whether the model's shared-prefix attention runs the native CPU kernel, whose query
        rows do not depend on each other."""
        from ponder.ops._registry import implementation
        from ponder.ops.attention import _shared_prefix_attention_host
        kv = self.kv_cache
        return (kv.device.type == "cpu" and kv.dtype in (torch.float32, torch.bfloat16) and kv.is_contiguous()
                and implementation("shared_prefix_attention", "auto", kv.device) is _shared_prefix_attention_host)

    def _run_model(self, input_ids, positions, slots, tables, lens, indptr, plan, row_groups=None) -> torch.Tensor:
        dev = self.device
        extra = {}
        if row_groups is not None:
            extra["row_groups"] = tuple(torch.from_numpy(a).to(dev) for a in row_groups)
        with torch.inference_mode():
            hidden = self.model(
                torch.as_tensor(np.asarray(input_ids, dtype=np.int64), device=dev),
                torch.as_tensor(np.asarray(positions, dtype=np.int64), device=dev),
                self.kv_cache,
                torch.as_tensor(np.asarray(slots, dtype=np.int64), device=dev),
                torch.as_tensor(tables, device=dev),
                torch.as_tensor(lens, device=dev),
                torch.as_tensor(indptr, device=dev),
                check=False,  # the page table builds consistent metadata; skip per-step value checks
                decode_plan=plan,
                **extra,
            )
        self.stats.model_calls += 1
        return hidden

    def append_forward(self, pages: np.ndarray, token_lists: List[np.ndarray], starts: Sequence[int],
                        what: str, evict: Optional[EvictFn]) -> torch.Tensor:
        """Append ``token_lists[i]`` to page sequence ``pages[i]`` (positions from ``starts[i]``)
        in one ragged forward; returns the hidden rows of every fed token ``[sum(n_i), C]``."""
        counts = np.array([t.size for t in token_lists], dtype=np.int32)
        flat = np.concatenate(token_lists).astype(np.int32)
        self._make_room(lambda: self.page_table.can_append(pages, counts), what, evict)
        slots, src, dst = self.page_table.append(pages, counts, flat)
        if len(src):
            ops.copy_pages(self.kv_cache, torch.as_tensor(np.asarray(src, dtype=np.int32), device=self.device),
                           torch.as_tensor(np.asarray(dst, dtype=np.int32), device=self.device),
                           backend=self.backend)
        self._note_usage()
        positions = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, counts.tolist())])
        return self._forward(flat, positions, slots, pages, counts)

    def _prefill_pages(self, token_lists: List[np.ndarray], evict: Optional[EvictFn]
                       ) -> Tuple[List[int], List[Tuple[torch.Tensor, int]]]:
        """Allocate + prefill each token list; returns page sequences and last-token hidden refs."""
        out_pages: List[int] = []
        refs: List[Tuple[torch.Tensor, int]] = []
        start = 0
        try:
            while start < len(token_lists):
                # Greedy chunking by prompt: each forward gets at most max_batch_tokens new rows
                # (a single longer prompt still goes alone).
                chunk, rows = [], 0
                while start + len(chunk) < len(token_lists):
                    n = len(token_lists[start + len(chunk)])
                    if chunk and rows + n > self.max_batch_tokens:
                        break
                    chunk.append(token_lists[start + len(chunk)])
                    rows += n
                ids, pos, slots, cpages, counts = [], [], [], [], []
                for toks in chunk:
                    self._make_room(lambda: self.page_table.can_allocate(toks), "prefilling", evict)
                    pseq, cached, slot = self.page_table.allocate(toks)
                    cpages.append(pseq)
                    out_pages.append(pseq)
                    ids.append(toks[cached:])
                    pos.append(np.arange(cached, len(toks)))
                    slots.append(np.asarray(slot, dtype=np.int64))
                    counts.append(len(toks) - cached)
                self._note_usage()
                hidden = self._forward(np.concatenate(ids), np.concatenate(pos), np.concatenate(slots), cpages, counts)
                self.stats.tokens_prefilled += int(sum(counts))
                refs.extend((hidden, int(e)) for e in np.cumsum(counts) - 1)
                start += len(chunk)
        except BaseException:
            for p in out_pages:
                self.page_table.free(p)
            raise
        return out_pages, refs

    def ensure_kv(self, recs: List[SeqRecord], evict: Optional[EvictFn]) -> None:
        """Protect ``recs`` for this call and re-prefill those whose KV was evicted (their stored
        hidden states are kept)."""
        self.protected.update(r.handle for r in recs)
        missing = list({r.handle: r for r in recs if r.pages == NO_PAGES}.values())
        if missing:
            pages, _ = self._prefill_pages([r.path_tokens() for r in missing], evict)
            for r, p in zip(missing, pages):
                r.pages = p
            self.stats.reprefilled_sequences += len(missing)

    # ---------------------------------------------------------------- public API: prompts, decode
    def prefill(self, prompts: Sequence, evict: Optional[EvictFn] = None) -> np.ndarray:
        """Prefill prompts (token-id sequences, or str when the tokenizer has ``encode``) into new
        sequences; returns their handles (int64 [R])."""
        if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__len__"):
            raise TypeError(f"prompts must be a list of prompts, got {type(prompts).__name__}")
        if len(prompts) == 0:
            raise ValueError("prompts is empty: give at least one prompt")
        check_evict(evict)
        token_lists = []
        for i, p in enumerate(prompts):
            if isinstance(p, str):
                if self.tokenizer is None or not hasattr(self.tokenizer, "encode"):
                    raise TypeError(f"prompts[{i}] is a str but the engine has no tokenizer with encode()")
                p = self.encode_prompt(p)
            arr = np.asarray(p)
            if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
                raise TypeError(f"prompts[{i}] must be a 1-D sequence of token ids, got {arr.dtype} {arr.shape}")
            if arr.size == 0:
                raise ValueError(f"prompts[{i}] is empty: a prompt needs at least one token")
            if arr.size >= self.max_context:
                raise ValueError(f"prompts[{i}] has {arr.size} tokens; the model's context is {self.max_context} "
                                 f"and the step needs room to grow")
            if arr.min() < 0 or arr.max() >= self.vocab_size:
                raise ValueError(f"prompts[{i}] has token ids outside [0, {self.vocab_size})")
            token_lists.append(arr.astype(np.int32))
        pages, refs = self._prefill_pages(token_lists, evict)
        handles = []
        for toks, p, ref in zip(token_lists, pages, refs):
            rec = self.seqs.new(None, toks, p)
            rec.hidden = ref
            handles.append(rec.handle)
        return np.asarray(handles, dtype=np.int64)

    def encode_prompt(self, text: str) -> List[int]:
        """Token ids of a text prompt: the tokenizer's chat template around one user message
        when it has one and ``chat_template`` is on (an instruct model expects it), else the
        plain encoding."""
        tok = self.tokenizer
        if self.chat_template and getattr(tok, "chat_template", None) and hasattr(tok, "apply_chat_template"):
            out = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
            ids = out["input_ids"] if hasattr(out, "keys") else out
            return [int(t) for t in ids]
        return list(tok.encode(text))

    def decode(self, seqs: Sequence[int], tokens: Sequence[int], evict: Optional[EvictFn] = None) -> torch.Tensor:
        """Append ``tokens[i]`` to sequence ``seqs[i]`` (distinct handles) in one forward; returns
        the new hidden states ``[M, hidden_size]`` (also kept as each sequence's last hidden)."""
        check_evict(evict)
        recs = self.seqs.lookup(int_list("seqs", seqs))
        toks = int_list("tokens", tokens)
        if toks.size != len(recs):
            raise ValueError(f"tokens must hold one token per sequence ({len(recs)}), got {toks.size}")
        if len({r.handle for r in recs}) != len(recs):
            raise ValueError("seqs has duplicates: fork a sequence to feed it two different tokens")
        if toks.size and (toks.min() < 0 or toks.max() >= self.vocab_size):
            raise ValueError(f"tokens must be token ids in [0, {self.vocab_size}), got {toks.tolist()}")
        for r in recs:
            if r.length + 1 > self.max_context:
                raise ValueError(f"sequence {r.handle} holds {r.length} tokens: the model's context "
                                 f"({self.max_context}) has no room for another")
        if not recs:
            return torch.empty(0, self.model.config.hidden_size, device=self.device)
        try:
            self.ensure_kv(recs, evict)
            pages = np.array([r.pages for r in recs], dtype=np.int32)
            hidden = self.decode_forward(pages, toks.astype(np.int32), "decoding", evict)
        finally:
            self.protected.clear()
        self.stats.tokens_decoded += len(recs)
        for i, (r, t) in enumerate(zip(recs, toks.tolist())):
            r.tokens = np.append(r.tokens, np.int32(t))
            r.length += 1
            r.hidden = (hidden, i)
        self.seqs.touch(recs)
        return hidden
