"""Batched tree expansion on a shared paged KV cache: the search tree is the KV tree.

:class:`Engine` is a :class:`~ponder.kv_store.KVStore` (one model, its KV tensor, its PageTable,
sequence handles) that also samples reasoning steps. ``expand`` grows child sequences under many
parent sequences at once:

1. fork a page sequence per child from its parent (a refcount increment, no copy);
2. decode all branches together, one model forward per token for the whole batch: one native
   ``PageTable.decode_step`` call appends the tokens and returns the step's positions, slots,
   copy-on-write list, block tables and attention plan; the branches' state lives in arrays
   (:class:`~ponder.step_batch.StepBatch`), so no Python loop runs per branch per token; a
   branch leaves the batch as soon as its step ends (stop string, stop token, EOS,
   ``max_step_tokens`` or the model's context) while the others go on;
3. hand back per child a new handle, its tokens and their log-probabilities, the hidden state at
   its last token (for scoring, and from which its own children will be sampled), its finish
   reason and its prior among its siblings.

The engine knows nothing of search trees or scores: a search keeps the handles of its nodes,
passes tree-local rng ids, and tells the engine what to evict or free.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch

from ponder import _core, ops
from ponder.decoding import constrain_logits, mask_with_trie, sibling_priors, split_repeats
from ponder.expansion import FINISH_REASONS, Expansion, SamplingParams, StepStop
from ponder.step_batch import CODE, RUNNING, StepBatch, StopRule, cached_stop_string_candidates
from ponder.kv_args import EvictFn, check_evict, int_list
from ponder.kv_store import KVStore
from ponder.sequences import NO_PAGES, SeqRecord

__all__ = ["AllowedTokensFn", "Engine", "Expansion", "FINISH_REASONS", "SamplingParams", "StepStop"]

logger = logging.getLogger(__name__)

# (parent handle, tokens of the step so far) -> the token ids allowed next, or None for any token
AllowedTokensFn = Callable[[int, List[int]], Optional[Iterable[int]]]


class Engine(KVStore):
    """A :class:`KVStore` that expands sequences into sampled reasoning steps (see the module
    docstring); constructor arguments are the store's."""

    # ---------------------------------------------------------------- public API: expansion
    def expand(self, seqs: Sequence[int], num_children=1, stop: StepStop = StepStop(),
               sampling: SamplingParams = SamplingParams(), seed: int = 0,
               rng_ids: Optional[Sequence[int]] = None, allowed_tokens: Optional[AllowedTokensFn] = None,
               distinct: bool = False, evict: Optional[EvictFn] = None,
               allowed_steps: Optional[Sequence[Optional[Sequence[Sequence[int]]]]] = None) -> Expansion:
        """Grow ``num_children`` (an int, or one per parent) child sequences under each of ``seqs``.

        Each child is a new handle holding its parent's tokens plus one sampled step. Sampling
        is keyed by (seed, parent rng id, child index, token position): the rng id is the parent
        handle unless ``rng_ids`` gives one per parent (a search passes tree-local node ids, so a
        tree is the same whether its problem is searched alone or in a batch), and the child
        index counts every child drawn at that parent so far. A branch therefore draws the same
        tokens whatever else is in the batch. On error no child exists, every page taken is
        returned and the parents are as before (KV evicted to make room stays evicted).

        ``allowed_tokens`` constrains decoding (a grammar, a task's legal moves): before each
        token of a branch it is called with the parent handle and the step's tokens so far and
        returns the token ids that may come next, or None for no restriction. The others get
        probability 0, and the children's log-probabilities (and priors) are those of the
        constrained distribution. This is a Python call per branch per token: the slow path.

        ``allowed_steps`` is the fast form of a constraint: per parent, None or the token
        sequences of every step it may take (each ending with its delimiter). They are compiled
        into one native token trie; logits are masked and branches advanced in C++ at every
        token, and a branch that has written a whole allowed step stops (finish ``"stop"``).

        ``distinct``: a child whose step equals that of a live child of the same parent, or of
        an earlier child of this call, is dropped (its KV freed, its tokens counted in
        ``Expansion.discarded_tokens``), so a parent may get fewer children than asked, even
        none. Later draws at a parent never repeat its earlier random keys.
        """
        if not isinstance(stop, StepStop):
            raise TypeError(f"stop must be a StepStop, got {type(stop).__name__}")
        if not isinstance(sampling, SamplingParams):
            raise TypeError(f"sampling must be a SamplingParams, got {type(sampling).__name__}")
        if stop.strings and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer with decode(); pass tokenizer= to Engine")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
        if allowed_tokens is not None and not callable(allowed_tokens):
            raise TypeError(f"allowed_tokens must be callable (parent handle, step tokens) -> token ids or None, "
                            f"got {type(allowed_tokens).__name__}")
        check_evict(evict)
        handles = int_list("seqs", seqs)
        if handles.size == 0:
            raise ValueError("seqs is empty: give at least one sequence to expand")
        if len(set(handles.tolist())) != handles.size:
            raise ValueError("seqs has duplicates; ask for more children per sequence instead")
        recs = self.seqs.lookup(handles)
        try:
            counts = np.broadcast_to(np.asarray(num_children), handles.shape)
        except ValueError:
            raise ValueError(f"num_children must be an int or one per sequence ({handles.size}), "
                             f"got {num_children!r}") from None
        if not np.issubdtype(counts.dtype, np.integer) or (counts < 1).any():
            raise ValueError(f"num_children must be integers >= 1, got {num_children!r}")
        total = sum(counts.tolist())  # Python ints: a uint64 count such as 2**63 must not wrap negative
        if total > self.num_pages:
            # every child writes at least one token into a page of its own (a fresh page or a
            # copy-on-write copy of its parent's partial last one)
            raise ValueError(f"num_children asks for {total} children in one call; the KV pool has "
                             f"{self.num_pages} pages and every child needs at least one")
        for r in recs:
            if r.length >= self.max_context:
                raise ValueError(f"sequence {r.handle} fills the model's context ({self.max_context} tokens)")
        if allowed_steps is not None and allowed_tokens is not None:
            raise ValueError("give allowed_tokens or allowed_steps, not both")
        trie, roots = (None, None) if allowed_steps is None else self._step_trie(allowed_steps, len(recs))
        rng = handles if rng_ids is None else np.asarray(rng_ids)
        # rng ids go into int64 sampling keys: 2**63 would overflow them mid-call
        if rng.shape != handles.shape or not np.issubdtype(rng.dtype, np.integer) or (rng < 0).any() \
                or (rng.size and int(rng.max()) >= 2**63):
            raise ValueError(f"rng_ids must be {handles.size} ints in [0, 2**63) (one per sequence), got {rng_ids!r}")

        batch: Optional[StepBatch] = None
        try:
            self.ensure_kv(recs, evict)
            parent_pages = np.array([r.pages for r in recs], dtype=np.int32)
            source = np.repeat(np.arange(len(recs)), counts)
            draws = np.array([r.draws for r in recs], dtype=np.int64)
            first = np.cumsum(counts) - counts  # each parent's first row
            batch = StepBatch(
                parents=handles[source], source=source, rng_ids=rng.astype(np.int64)[source],
                child_index=draws[source] + np.arange(source.size) - first[source],
                seqs=self.page_table.fork_many(parent_pages[source]),
                lengths=np.array([r.length for r in recs], dtype=np.int64)[source],
                trie_states=(np.full(source.size, -1, np.int32) if roots is None else roots[source]),
                max_tokens=stop.max_step_tokens)
            mask = (allowed_tokens, trie)
            rule = self._stop_rule(stop)
            rows = np.arange(len(batch))
            self._sample_rows(batch, rows, self.hidden(handles)[torch.from_numpy(source)], rule, sampling, seed, mask)
            while rows.size:
                rows = self._decode_rows(batch, rows, rule, sampling, seed, mask, evict)
            exp = self._commit(recs, batch, bool(distinct))
        except BaseException:
            if batch is not None:
                for seq in batch.seqs[batch.seqs != NO_PAGES].tolist():
                    self.page_table.free(seq)
            raise
        finally:
            self.protected.clear()
        for r, k in zip(recs, counts.tolist()):
            r.draws += k
        self.seqs.touch(recs)
        return exp

    def _step_trie(self, allowed_steps, num_parents: int):
        """(TokenTrie, int32 root per parent, -1 for an unconstrained one) of ``allowed_steps``."""
        if isinstance(allowed_steps, (str, bytes)) or len(allowed_steps) != num_parents:
            raise ValueError(f"allowed_steps must hold one entry (None or a list of token sequences) per sequence "
                             f"({num_parents})")
        trie = _core.TokenTrie()
        roots = np.full(num_parents, -1, dtype=np.int32)
        owner, steps = [], []
        for i, entry in enumerate(allowed_steps):
            if entry is None:
                continue
            roots[i] = trie.add_root()
            for j, step in enumerate(entry):
                steps.append(int_list(f"allowed_steps[{i}][{j}]", step).astype(np.int32))
                owner.append(roots[i])
            if not len(entry):
                raise ValueError(f"allowed_steps[{i}] is empty: give None for no restriction")
        indptr = np.zeros(len(steps) + 1, dtype=np.int64)
        np.cumsum([s.size for s in steps], out=indptr[1:])
        flat = np.concatenate(steps) if steps else np.zeros(0, np.int32)
        trie.insert(np.asarray(owner, dtype=np.int32), indptr, flat, self.vocab_size)
        return trie, roots

    def _stop_rule(self, stop: StepStop) -> StopRule:
        """``stop`` compiled for this engine (stop-string candidates cached per tokenizer)."""
        cands = None
        if stop.strings:
            cands = cached_stop_string_candidates(self.tokenizer, stop.strings, self.vocab_size)
        return StopRule(stop, self.eos_token_ids, self.tokenizer, self.vocab_size, self.max_context, cands)

    def _sample_rows(self, batch: StepBatch, rows: np.ndarray, hidden: torch.Tensor, rule: StopRule,
                     sampling: SamplingParams, seed: int, mask) -> None:
        """Sample the next token of each of ``rows`` from ``hidden`` and set their finish codes.
        ``mask`` is (allowed_tokens callback or None, step TokenTrie or None)."""
        allowed_tokens, trie = mask
        states = None if trie is None else batch.trie_states[rows]
        groups = batch.groups_of(rows) if self.dedup_rows else None
        shared_rows = None  # rows of a group draw from their group's logits row (no per-row mask)
        with torch.inference_mode():
            if groups is None:
                logits = self.model.logits(hidden)
            else:  # rows of a group have the same hidden state: one LM-head row each
                firsts, of_row = (torch.from_numpy(a).to(hidden.device) for a in groups)
                logits = self.model.logits(hidden[firsts])
                masked = allowed_tokens is not None or (states is not None and (states >= 0).any())
                if masked:
                    logits = logits[of_row]
                else:
                    shared_rows = of_row
            if allowed_tokens is not None:
                logits = constrain_logits(batch.branches(rows), logits, allowed_tokens)
            if states is not None and (states >= 0).any():
                logits = mask_with_trie(trie, states, logits)
        n = rows.size
        keys = np.empty((n, 4), dtype=np.int64)
        keys[:, 0] = seed
        keys[:, 1] = batch.rng_ids[rows]
        keys[:, 2] = batch.child_index[rows]
        keys[:, 3] = batch.lengths[rows]
        temperature, top_k, top_p = self._sampling_columns(n, sampling, logits.device)
        # check=False: the columns come from a validated SamplingParams
        keys_t = torch.from_numpy(keys).to(logits.device)
        if shared_rows is None:
            tokens, logprobs = ops.sample(logits, keys_t, temperature, top_k, top_p, backend=self.backend, check=False)
        else:
            tokens, logprobs = ops.sample_shared(logits, shared_rows, keys_t, temperature, top_k, top_p,
                                                 backend=self.backend, check=False)
        toks = tokens.cpu().numpy()
        at_leaf = np.zeros(n, dtype=bool)
        if states is not None:
            nxt, at_leaf = trie.advance(states, toks)
            batch.trie_states[rows] = nxt
        batch.record(rows, toks, logprobs.cpu().numpy())
        batch.finish[rows] = rule.codes(batch.tokens[rows], batch.counts[rows], batch.lengths[rows], at_leaf)

    def _sampling_columns(self, n: int, sampling: SamplingParams, device):
        """The per-row temperature / top_k / top_p tensors of ``n`` rows (cached: every row of
        a call samples alike, and the shapes repeat from token to token)."""
        key = (n, sampling, str(device))
        cache = self.__dict__.setdefault("_sampling_cache", {})
        cols = cache.get(key)
        if cols is None:
            if len(cache) > 256:
                cache.clear()
            cols = cache[key] = (
                torch.full((n,), float(sampling.temperature), dtype=torch.float32, device=device),
                torch.full((n,), int(sampling.top_k), dtype=torch.int32, device=device),
                torch.full((n,), float(sampling.top_p), dtype=torch.float32, device=device))
        return cols

    def _decode_rows(self, batch: StepBatch, rows: np.ndarray, rule: StopRule, sampling: SamplingParams, seed: int,
                     mask, evict: Optional[EvictFn]) -> np.ndarray:
        """Feed each of ``rows`` its last sampled token in one forward; rows whose step ended keep
        the hidden state, the others sample their next token. Returns the rows still running."""
        toks = batch.tokens[rows, batch.counts[rows] - 1]
        groups = batch.regroup(rows, toks, self.vocab_size) if self.dedup_rows else None
        hidden = self.decode_forward(batch.seqs[rows], toks, "decoding", evict, groups)
        if groups is not None:
            apart = self.last_decode_apart
            if apart is not None and apart.size:  # through a plan, some rows came out different
                batch.part(rows, apart)
            self.stats.decode_rows_shared += rows.size - groups[0].size - (0 if apart is None else apart.size)
        self.stats.tokens_decoded += rows.size
        batch.lengths[rows] += 1
        done = batch.finish[rows] != RUNNING
        if not done.any():  # the usual token: every row goes on and samples from all of hidden
            self._sample_rows(batch, rows, hidden, rule, sampling, seed, mask)
            return rows
        batch.hidden_at[rows[done], 0] = len(batch.hiddens)
        batch.hidden_at[rows[done], 1] = np.flatnonzero(done)
        batch.hiddens.append(hidden)
        going = np.flatnonzero(~done)
        if going.size:
            self._sample_rows(batch, rows[going], hidden[torch.from_numpy(going)], rule, sampling, seed, mask)
        return rows[going]

    def _commit(self, recs: List[SeqRecord], batch: StepBatch, distinct: bool) -> Expansion:
        """The finished batch as children: a record per kept row, and the call's Expansion.
        Built from the batch's arrays (no per-row Branch objects unless ``distinct`` needs them:
        a few hundred short-lived containers per call grew the old generation and brought
        Python's full garbage collection, ~0.1 s with torch loaded, every few calls)."""
        rows = np.arange(len(batch))
        discarded: Dict[int, int] = {}
        if distinct:
            branches = batch.branches()
            by_handle = {r.handle: r for r in recs}
            kept, repeats = split_repeats(branches, lambda h: self.seqs.steps_of(by_handle[h]))
            for b in repeats:
                self.page_table.free(b.seq)
                batch.seqs[batch.seqs == b.seq] = NO_PAGES  # freed here, so the clean-up must not free it again
                discarded[b.parent] = discarded.get(b.parent, 0) + len(b.tokens)
            if repeats:
                self.stats.extra["duplicate_children"] = self.stats.extra.get("duplicate_children", 0) + len(repeats)
                kept_ids = {id(b) for b in kept}
                rows = np.array([i for i, b in enumerate(branches) if id(b) in kept_ids], dtype=np.int64)
            del branches, kept, repeats
        C = self.model.config.hidden_size
        if not rows.size:
            return Expansion(parents=np.zeros(0, np.int64), children=np.zeros(0, np.int64),
                             parent_index=np.zeros(0, np.int64), tokens=[], logprobs=[],
                             hidden=torch.empty(0, C, device=self.device), values=None, finish_reasons=[],
                             terminal=np.zeros(0, bool), priors=np.zeros(0, np.float32), discarded_tokens=discarded)
        # each row's final hidden state: row hidden_at[i, 1] of decode output hidden_at[i, 0]
        at = batch.hidden_at[rows]
        if len(batch.hiddens) == 1:
            hidden = batch.hiddens[0][torch.from_numpy(at[:, 1]).to(self.device)]
        else:
            start = np.cumsum([0] + [h.shape[0] for h in batch.hiddens[:-1]])
            hidden = torch.cat(batch.hiddens)[torch.from_numpy(start[at[:, 0]] + at[:, 1]).to(self.device)]
        counts = batch.counts[rows]
        tokens, logprobs = batch.tokens[rows], batch.logprobs[rows]
        codes = batch.finish[rows]
        parents = batch.parents[rows].astype(np.int64)
        source = batch.source[rows].astype(np.int64)
        step_tokens = [tokens[i, :c].copy() for i, c in enumerate(counts.tolist())]
        children = np.empty(rows.size, dtype=np.int64)
        for i, (src, seq) in enumerate(zip(source.tolist(), batch.seqs[rows].tolist())):
            rec = self.seqs.new(recs[src], step_tokens[i].copy(), seq, child=True)
            rec.hidden = (hidden, i)
            children[i] = rec.handle
        # each step's log-probability summed in float64 from its first token on, as Python's sum
        # of the float32 values would (a cumulative sum adds in order)
        step_logprob = np.cumsum(logprobs.astype(np.float64), axis=1)[np.arange(rows.size), counts - 1]
        return Expansion(
            parents=parents, children=children, parent_index=source, tokens=step_tokens,
            logprobs=[logprobs[i, :c].copy() for i, c in enumerate(counts.tolist())], hidden=hidden, values=None,
            finish_reasons=[FINISH_REASONS[c - 1] for c in codes.tolist()],
            terminal=np.isin(codes, (CODE["eos"], CODE["context"])),
            priors=sibling_priors(parents, step_logprob), discarded_tokens=discarded)

    # ---------------------------------------------------------------- public API: teacher forcing
    def _teacher_force(self, seqs, token_lists, evict: Optional[EvictFn]):
        """Feed given tokens on forks of ``seqs`` in one ragged forward. Returns (records, forked
        page sequences, lists, hidden at each list's last token [M, C]); the caller owns the pages."""
        check_evict(evict)
        recs = self.seqs.lookup(int_list("seqs", seqs))
        if isinstance(token_lists, (str, bytes)) or len(token_lists) != len(recs):
            raise ValueError(f"token_lists must hold one token list per sequence ({len(recs)})")
        lists = [int_list(f"token_lists[{i}]", t).astype(np.int32) for i, t in enumerate(token_lists)]
        for i, (r, t) in enumerate(zip(recs, lists)):
            if t.size == 0:
                raise ValueError(f"token_lists[{i}] is empty: every token list must hold at least one token")
            if t.min() < 0 or t.max() >= self.vocab_size:
                raise ValueError(f"token_lists[{i}] has token ids outside [0, {self.vocab_size})")
            if r.length + t.size > self.max_context:
                raise ValueError(f"sequence {r.handle} has {r.length} tokens; token_lists[{i}] adds {t.size}, "
                                 f"more than the context of {self.max_context}")
        forked: List[int] = []
        try:
            self.ensure_kv(recs, evict)
            forked = [self.page_table.fork(r.pages) for r in recs]
            hidden = self.append_forward(np.asarray(forked, dtype=np.int32), lists, [r.length for r in recs],
                                          "teacher forcing", evict)
            self.stats.tokens_prefilled += int(sum(t.size for t in lists))
            ends = np.cumsum([t.size for t in lists]) - 1
            return recs, forked, lists, hidden[ends]
        except BaseException:
            for p in forked:
                self.page_table.free(p)
            raise
        finally:
            self.protected.clear()

    def score_continuations(self, seqs: Sequence[int], token_lists: Sequence[Sequence[int]],
                            evict: Optional[EvictFn] = None) -> torch.Tensor:
        """Hidden states ``[M, C]`` after feeding ``token_lists[i]`` on top of ``seqs[i]``,
        without keeping them (e.g. a PRM step tag read on throwaway forks of the KV)."""
        if int_list("seqs", seqs).size == 0:
            return torch.empty(0, self.model.config.hidden_size, device=self.device)
        _, forked, _, hidden = self._teacher_force(seqs, token_lists, evict)
        for p in forked:
            self.page_table.free(p)
        return hidden

    def extend(self, seqs: Sequence[int], token_lists: Sequence[Sequence[int]],
               evict: Optional[EvictFn] = None) -> np.ndarray:
        """New child sequences, ``seqs[i]`` plus ``token_lists[i]`` (teacher forcing, no sampling);
        returns their handles (int64 [M]), each keeping its KV and its last hidden state."""
        if int_list("seqs", seqs).size == 0:
            return np.zeros(0, dtype=np.int64)
        recs, forked, lists, hidden = self._teacher_force(seqs, token_lists, evict)
        out = []
        for i, (r, p, t) in enumerate(zip(recs, forked, lists)):
            child = self.seqs.new(r, t, p, child=True)
            child.hidden = (hidden, i)
            out.append(child.handle)
        self.seqs.touch(recs)
        return np.asarray(out, dtype=np.int64)
