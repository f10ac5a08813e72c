"""Batched tree expansion on a shared paged KV cache: the search tree is the KV tree.

The engine owns a model's KV tensor, a :class:`~ponder.PageTable` for its pages and a
:class:`~ponder.Forest` of search trees whose nodes point at page sequences. ``add_prompts``
prefills prompts into new roots; ``expand`` grows children under many nodes of many trees at
once:

1. fork a page sequence per child from its parent (a refcount increment, no copy);
2. decode all branches together, one model forward per token for the whole batch; copy-on-write
   page copies run in one batched ``copy_pages`` call before each forward; a branch leaves the
   batch as soon as its step ends (stop string, stop token, EOS, ``max_step_tokens`` or the
   model's context) while the others go on;
3. hand back per child its tokens, their log-probabilities, the step's last hidden state (for
   scoring, and from which the child's own children will be sampled) and the finish reason.

A node keeps the hidden state of its last token, so expanding it never needs a forward over its
own tokens. When the page pool is full the engine frees the KV of the least valuable nodes
(through ``evict`` or, by default, lowest path score first, unexpanded leaves before expanded
nodes); a node without KV is re-prefilled from its tokens when it is expanded again, with the
prefix cache picking up whatever pages survived.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ponder import ops
from ponder.decoding import constrain_logits, finish_reason, sibling_priors, split_repeats
from ponder.expansion import FINISH_REASONS, EngineStats, Expansion, SamplingParams, StepStop, _Branch
from ponder.forest import NO_PAGES, Forest
from ponder.page_table import KVCacheFull, PageTable

__all__ = ["Engine", "Expansion", "FINISH_REASONS", "SamplingParams", "StepStop"]

logger = logging.getLogger(__name__)

EvictFn = Callable[["Engine", int], Iterable[int]]
# (parent node, tokens of the step so far) -> the token ids allowed next, or None for any token
AllowedTokensFn = Callable[[int, List[int]], Optional[Iterable[int]]]


class Engine:
    """Owns one model's KV cache, its PageTable and a Forest; prefills and expands nodes.

    Args:
        model: a :class:`ponder.models.DecoderLM` (or anything with its forward / logits /
            value / allocate_kv_cache interface).
        tokenizer: anything with ``decode(list[int]) -> str``; needed for stop strings.
        num_pages: size of the KV page pool; or give ``max_kv_bytes`` and let the engine derive it.
        page_size: tokens per KV page (S).
        prefix_cache: reuse full pages across prompts by chained token hash.
        eos_token_ids: tokens that end a step and make it terminal (default: the model config's).
        max_batch_tokens: prefill rows per forward (longer batches are chunked by prompt).
        evict: ``evict(engine, num_pages_needed) -> node ids`` whose KV may be dropped under
            memory pressure; ``None`` uses the default order (lowest path score first, unexpanded
            leaves before expanded nodes).
        backend: op backend for copy_pages and sampling (``"auto"`` | ``"torch"`` | ...).
    """

    def __init__(self, model, tokenizer=None, *, num_pages: Optional[int] = None, page_size: int = 16,
                 max_kv_bytes: Optional[int] = None, prefix_cache: bool = True,
                 eos_token_ids: Optional[Sequence[int]] = None, max_batch_tokens: int = 4096,
                 evict: Optional[EvictFn] = None, backend: str = "auto"):
        if not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be an int >= 1, got {page_size!r}")
        bytes_per_page = model.kv_bytes_per_token * page_size
        if num_pages is None:
            if max_kv_bytes is None:
                raise ValueError("give num_pages or max_kv_bytes to size the KV cache")
            num_pages = int(max_kv_bytes) // bytes_per_page
        if not isinstance(num_pages, (int, np.integer)) or num_pages < 1:
            raise ValueError(f"num_pages must be >= 1 (max_kv_bytes too small?), got {num_pages!r}")
        if not isinstance(max_batch_tokens, int) or max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be an int >= 1, got {max_batch_tokens!r}")
        ops.resolve_backend(backend)  # validates the name now rather than mid-search
        self.model = model
        self.tokenizer = tokenizer
        self.page_size = page_size
        self.num_pages = int(num_pages)
        self.backend = backend
        self.max_batch_tokens = max_batch_tokens
        self.evict_fn = evict
        cfg = model.config
        self.max_context = int(cfg.max_position_embeddings)
        if eos_token_ids is None:
            eos = getattr(cfg, "eos_token_id", None)
            eos_token_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        self.kv_cache = model.allocate_kv_cache(self.num_pages, page_size)
        self.device = self.kv_cache.device
        self.page_table = PageTable(self.num_pages, page_size, prefix_cache=prefix_cache)
        self.forest = Forest()
        self.stats = EngineStats()
        # node -> (batch hidden tensor, row): the hidden state at the node's last token.
        self._hidden: Dict[int, Tuple[torch.Tensor, int]] = {}
        self._protected: set = set()
        self._allowed: Optional[AllowedTokensFn] = None  # the running expand()'s token constraint
        # node -> children drawn so far (kept or dropped as duplicates): the next child's rng index
        self._draws: Dict[int, int] = {}

    # ---------------------------------------------------------------- accounting
    @property
    def kv_bytes_per_page(self) -> int:
        return int(self.model.kv_bytes_per_token * self.page_size)

    def kv_stats(self) -> Dict[str, int]:
        """Pages in use / peak, prefix-cache hits, tokens prefilled vs decoded, KV bytes."""
        st = dict(self.page_table.stats())
        st.update(pages_peak=self.stats.pages_peak, kv_bytes_in_use=st["used"] * self.kv_bytes_per_page,
                  kv_bytes_peak=self.stats.pages_peak * self.kv_bytes_per_page,
                  tokens_prefilled=self.stats.tokens_prefilled, tokens_decoded=self.stats.tokens_decoded,
                  model_calls=self.stats.model_calls, evicted_nodes=self.stats.evicted_nodes,
                  reprefilled_nodes=self.stats.reprefilled_nodes)
        return st

    def _note_usage(self) -> None:
        self.stats.pages_peak = max(self.stats.pages_peak, int(self.page_table.stats()["used"]))

    # ---------------------------------------------------------------- memory pressure
    def _eviction_order(self) -> List[int]:
        f = self.forest
        seqs = np.asarray(f.page_seq)
        alive = np.asarray(f.alive).astype(bool)
        cand = np.nonzero(alive & (seqs != NO_PAGES))[0]
        cand = np.array([n for n in cand if int(n) not in self._protected], dtype=np.int64)
        if cand.size == 0:
            return []
        expanded = np.asarray(f.num_children)[cand] > 0
        score = np.asarray(f.path_score)[cand]
        order = np.lexsort((cand, score, expanded))  # unexpanded first, then lowest score, then id
        return [int(c) for c in cand[order]]

    def evict_nodes(self, nodes: Iterable[int]) -> int:
        """Drop the KV of ``nodes`` (their tokens and hidden states stay); returns nodes evicted."""
        n = 0
        for node in nodes:
            node = int(node)
            seq = int(self.forest.page_seq[node])
            if seq == NO_PAGES or node in self._protected:
                continue
            self.page_table.free(seq)
            self.forest.set_page_seqs([node], [NO_PAGES])
            n += 1
        self.stats.evicted_nodes += n
        return n

    def _make_room(self, fits: Callable[[], bool], what: str) -> None:
        if fits():
            return
        if self.evict_fn is not None:
            for node in self.evict_fn(self, self._pages_short(fits)):
                self.evict_nodes([node])
                if fits():
                    return
        for node in self._eviction_order():
            self.evict_nodes([node])
            if fits():
                return
        st = self.page_table.stats()
        raise KVCacheFull(
            f"KV cache full while {what}: pool of {st['num_pages']} pages ({self.page_size} tokens each), "
            f"{st['free']} free, {st['evictable']} evictable cached, {st['used']} in use by live branches "
            f"and nothing left to evict; give the engine more num_pages / max_kv_bytes or expand fewer nodes"
        )

    def _pages_short(self, fits: Callable[[], bool]) -> int:
        st = self.page_table.stats()
        return max(1, self.num_pages - st["free"] - st["evictable"])

    # ---------------------------------------------------------------- forward helpers
    def _forward(self, input_ids: List[int], positions: List[int], slots: np.ndarray, seqs: Sequence[int],
                 query_counts: Sequence[int]) -> torch.Tensor:
        dev = self.device
        tables, lens = self.page_table.batch_tables(np.asarray(seqs, dtype=np.int32), pad=0)
        indptr = np.zeros(len(query_counts) + 1, dtype=np.int32)
        np.cumsum(query_counts, out=indptr[1:])
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
            )
        self.stats.model_calls += 1
        return hidden

    def _run_copies(self, src: np.ndarray, dst: np.ndarray) -> None:
        if len(src):
            ops.copy_pages(self.kv_cache, torch.as_tensor(np.asarray(src, dtype=np.int32), device=self.device),
                           torch.as_tensor(np.asarray(dst, dtype=np.int32), device=self.device),
                           backend=self.backend)

    def _prefill_sequences(self, token_lists: List[np.ndarray]) -> Tuple[List[int], List[Tuple[torch.Tensor, int]]]:
        """Allocate + prefill each token list; returns seq handles and last-token hidden refs."""
        seqs: List[int] = []
        refs: List[Tuple[torch.Tensor, int]] = []
        start = 0
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
            ids, pos, slots, cseqs, counts = [], [], [], [], []
            try:
                for toks in chunk:
                    self._make_room(lambda: self.page_table.can_allocate(toks), "prefilling")
                    seq, cached, slot = self.page_table.allocate(toks)
                    cseqs.append(seq)
                    ids.extend(int(t) for t in toks[cached:])
                    pos.extend(range(cached, len(toks)))
                    slots.append(np.asarray(slot, dtype=np.int64))
                    counts.append(len(toks) - cached)
                self._note_usage()
                hidden = self._forward(ids, pos, np.concatenate(slots), cseqs, counts)
            except BaseException:
                for s in cseqs:
                    self.page_table.free(s)
                raise
            self.stats.tokens_prefilled += len(ids)
            ends = np.cumsum(counts) - 1
            seqs.extend(cseqs)
            refs.extend((hidden, int(e)) for e in ends)
            start += len(chunk)
        return seqs, refs

    # ---------------------------------------------------------------- public API
    def add_prompts(self, prompts: Sequence) -> np.ndarray:
        """Prefill prompts (token-id sequences, or str when a tokenizer with ``encode`` is set)
        into new roots of the forest; returns their node ids (int32 [R])."""
        if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__len__"):
            raise TypeError(f"prompts must be a list of prompts, got {type(prompts).__name__}")
        if len(prompts) == 0:
            raise ValueError("prompts is empty: give at least one prompt")
        token_lists = []
        for i, p in enumerate(prompts):
            if isinstance(p, str):
                if self.tokenizer is None or not hasattr(self.tokenizer, "encode"):
                    raise TypeError(f"prompts[{i}] is a str but the engine has no tokenizer with encode()")
                p = self.tokenizer.encode(p)
            arr = np.asarray(p)
            if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
                raise TypeError(f"prompts[{i}] must be a 1-D sequence of token ids, got {arr.dtype} {arr.shape}")
            if arr.size == 0:
                raise ValueError(f"prompts[{i}] is empty: a prompt needs at least one token")
            if arr.size >= self.max_context:
                raise ValueError(f"prompts[{i}] has {arr.size} tokens; the model's context is {self.max_context} "
                                 f"and the step needs room to grow")
            vocab = int(self.model.config.vocab_size)
            if arr.min() < 0 or arr.max() >= vocab:
                raise ValueError(f"prompts[{i}] has token ids outside [0, {vocab})")
            token_lists.append(arr.astype(np.int32))
        seqs, refs = self._prefill_sequences(token_lists)
        indptr = np.zeros(len(token_lists) + 1, dtype=np.int64)
        np.cumsum([len(t) for t in token_lists], out=indptr[1:])
        roots = self.forest.add_roots(np.concatenate(token_lists), indptr)
        self.forest.set_page_seqs(roots, seqs)
        for r, ref in zip(roots, refs):
            self._hidden[int(r)] = ref
        return roots

    def hidden(self, nodes: Sequence[int]) -> torch.Tensor:
        """[len(nodes), hidden_size]: the hidden state at each node's last token."""
        rows = []
        for n in nodes:
            ref = self._hidden.get(int(n))
            if ref is None:
                raise ValueError(f"node {int(n)} has no hidden state (released or unknown)")
            rows.append(ref[0][ref[1]])
        return torch.stack(rows) if rows else torch.empty(0, self.model.config.hidden_size, device=self.device)

    def release(self, node: int) -> None:
        """Release the subtree rooted at ``node``: its nodes die and its KV pages return to the pool."""
        node = int(node)
        before = set(self._subtree(node))
        for seq in self.forest.release(node):
            self.page_table.free(int(seq))
        for n in before:
            self._hidden.pop(n, None)
            self._draws.pop(n, None)

    def _subtree(self, node: int) -> List[int]:
        out, stack = [], [node]
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(int(c) for c in self.forest.children(n))
        return out

    # ---------------------------------------------------------------- expansion
    def _check_nodes(self, nodes, unique: bool = True, allow_terminal: bool = False) -> np.ndarray:
        arr = np.asarray(nodes)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"nodes must be a 1-D sequence of node ids, got {arr.dtype} {arr.shape}")
        if arr.size == 0:
            raise ValueError("nodes is empty: give at least one node to expand")
        if unique and len(set(arr.tolist())) != arr.size:
            raise ValueError("nodes has duplicates; ask for more children per node instead")
        for n in arr.tolist():
            if n < 0 or n >= self.forest.num_nodes:
                raise ValueError(f"unknown node id {n}: the forest has {self.forest.num_nodes} nodes")
            if not self.forest.is_alive(n):
                raise ValueError(f"node {n} was released")
            if not allow_terminal and bool(self.forest.terminal[n]):
                raise ValueError(f"node {n} is terminal and cannot be expanded")
            if n not in self._hidden:
                raise ValueError(f"node {n} has no hidden state; it was not produced by this engine")
        return arr.astype(np.int64)

    def expand(self, nodes: Sequence[int], num_children=1, stop: StepStop = StepStop(),
               sampling: SamplingParams = SamplingParams(), seed: int = 0,
               rng_ids: Optional[Sequence[int]] = None, allowed_tokens: Optional[AllowedTokensFn] = None,
               distinct: bool = False) -> Expansion:
        """Grow ``num_children`` (an int, or one per node) new children under each of ``nodes``.

        Children are added to ``self.forest`` (prior = the child's sequence probability normalised
        over the siblings made in this call; reward and path score 0 until a scorer sets them;
        terminal when the step hit EOS or the context limit). Sampling is keyed by
        (seed, parent id, child index, token position), so a branch draws the same tokens
        whatever else is in the batch. The parent id is the node id unless ``rng_ids`` gives one
        per node (the search layer passes tree-local ids so that a tree is the same whether its
        problem is searched alone or in a batch). On any error the forest and the page pool are
        left as they were before the call.

        ``allowed_tokens`` constrains decoding (a grammar, a task's legal moves): before each
        token of a branch it is called with the parent node and the step's tokens so far and
        returns the token ids that may come next, or None for no restriction. The others get
        probability 0, and the children's log-probabilities (and priors) are those of the
        constrained distribution.

        ``distinct``: a child whose step tokens equal those of an existing child of the same
        parent, or of an earlier child of this call, is dropped (its KV freed, its tokens counted
        in ``Expansion.discarded_tokens``), so a parent may get fewer children than asked, even
        none. Later draws at a parent never repeat its earlier random keys, so asking again
        samples afresh.
        """
        if not isinstance(stop, StepStop):
            raise TypeError(f"stop must be a StepStop, got {type(stop).__name__}")
        if not isinstance(sampling, SamplingParams):
            raise TypeError(f"sampling must be a SamplingParams, got {type(sampling).__name__}")
        if stop.strings and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer with decode(); pass tokenizer= to Engine")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        if allowed_tokens is not None and not callable(allowed_tokens):
            raise TypeError(f"allowed_tokens must be callable (node, step tokens) -> token ids or None, "
                            f"got {type(allowed_tokens).__name__}")
        parents = self._check_nodes(nodes)
        try:
            counts = np.broadcast_to(np.asarray(num_children), parents.shape)
        except ValueError:
            raise ValueError(f"num_children must be an int or one per node ({parents.size}), got {num_children!r}") from None
        if not np.issubdtype(counts.dtype, np.integer) or (counts < 1).any():
            raise ValueError(f"num_children must be integers >= 1, got {num_children!r}")
        if rng_ids is None:
            rng = parents
        else:
            rng = np.asarray(rng_ids)
            if rng.shape != parents.shape or not np.issubdtype(rng.dtype, np.integer) or (rng < 0).any():
                raise ValueError(f"rng_ids must be {parents.size} non-negative ints (one per node), got {rng_ids!r}")

        branches: List[_Branch] = []
        try:
            self._ensure_kv(parents)
            for p, k, rid in zip(parents.tolist(), counts.tolist(), rng.tolist()):
                base = max(self._draws.get(p, 0), int(self.forest.num_children[p]))
                pseq = int(self.forest.page_seq[p])
                length = int(self.page_table.num_tokens(pseq))
                for j in range(k):
                    branches.append(_Branch(parent=p, rng_id=int(rid), child_index=base + j,
                                            seq=self.page_table.fork(pseq), tokens=[], logprobs=[], length=length))
            self._allowed = allowed_tokens
            self._sample_into(branches, self.hidden([b.parent for b in branches]), stop, sampling, seed)
            active = branches
            while active:
                active = self._decode_step(active, stop, sampling, seed)
            exp = self._commit(branches, bool(distinct))
            for b in branches:
                self._draws[b.parent] = max(self._draws.get(b.parent, 0), b.child_index + 1)
            return exp
        except BaseException:
            for b in branches:
                if b.seq != NO_PAGES:
                    self.page_table.free(b.seq)
            raise
        finally:
            self._protected = set()
            self._allowed = None

    def _ensure_kv(self, parents: np.ndarray) -> None:
        """Re-prefill parents whose KV was evicted; their stored hidden states are kept.

        Parents stay protected from eviction for the whole expansion: their children share all
        their pages, so evicting them would free nothing."""
        self._protected = set(parents.tolist())
        missing = [n for n in dict.fromkeys(parents.tolist()) if int(self.forest.page_seq[n]) == NO_PAGES]
        if not missing:
            return
        seqs, _ = self._prefill_sequences([np.asarray(self.forest.path_tokens(n), dtype=np.int32) for n in missing])
        self.forest.set_page_seqs(missing, seqs)
        self.stats.reprefilled_nodes += len(missing)

    def _sample_into(self, rows: List[_Branch], hidden: torch.Tensor, stop: StepStop, sampling: SamplingParams,
                     seed: int) -> None:
        """Sample each row's next token from ``hidden`` and decide whether it ends the step."""
        with torch.inference_mode():
            logits = self.model.logits(hidden)
            if self._allowed is not None:
                logits = constrain_logits(rows, logits, self._allowed)
        n = len(rows)
        keys = torch.tensor([[seed, b.rng_id, b.child_index, b.length] for b in rows], dtype=torch.int64,
                            device=logits.device)
        tokens, logprobs = ops.sample(
            logits, keys,
            torch.full((n,), float(sampling.temperature), dtype=torch.float32, device=logits.device),
            torch.full((n,), int(sampling.top_k), dtype=torch.int32, device=logits.device),
            torch.full((n,), float(sampling.top_p), dtype=torch.float32, device=logits.device),
            backend=self.backend,
        )
        for b, t, lp in zip(rows, tokens.tolist(), logprobs.tolist()):
            b.tokens.append(int(t))
            b.logprobs.append(float(lp))
            b.finish = finish_reason(b, stop, self.eos_token_ids, self.tokenizer, self.max_context)

    def _decode_step(self, active: List[_Branch], stop: StepStop, sampling: SamplingParams, seed: int) -> List[_Branch]:
        seqs = np.array([b.seq for b in active], dtype=np.int32)
        ones = np.ones(len(active), dtype=np.int32)
        toks = np.array([b.tokens[-1] for b in active], dtype=np.int32)
        self._make_room(lambda: self.page_table.can_append(seqs, ones), "decoding")
        slots, src, dst = self.page_table.append(seqs, ones, toks)
        self._run_copies(src, dst)
        self._note_usage()
        positions = [b.length for b in active]
        hidden = self._forward(toks.tolist(), positions, slots, seqs, ones)
        self.stats.tokens_decoded += len(active)
        cont_rows, cont = [], []
        for i, b in enumerate(active):
            b.length += 1
            if b.finish is not None:
                b.hidden_ref = (hidden, i)
            else:
                cont_rows.append(i)
                cont.append(b)
        if cont:
            self._sample_into(cont, hidden[cont_rows], stop, sampling, seed)
        return cont

    def _drop_duplicates(self, branches: List[_Branch]) -> Tuple[List[_Branch], Dict[int, int]]:
        """``branches`` without repeats of an existing sibling or of an earlier branch; the
        repeats' sequences are freed. Returns (kept, parent -> tokens of its dropped)."""
        kept, repeats = split_repeats(branches, lambda p: {tuple(self.forest.node_tokens(int(c)).tolist())
                                                           for c in self.forest.children(p)})
        discarded: Dict[int, int] = {}
        for b in repeats:
            self.page_table.free(b.seq)
            discarded[b.parent] = discarded.get(b.parent, 0) + len(b.tokens)
        if repeats:
            self.stats.extra["duplicate_children"] = self.stats.extra.get("duplicate_children", 0) + len(repeats)
        return kept, discarded

    def _commit(self, branches: List[_Branch], distinct: bool = False) -> Expansion:
        discarded: Dict[int, int] = {}
        if distinct:
            # freed here, so the caller's clean-up must not free them again
            all_branches = branches
            branches, discarded = self._drop_duplicates(branches)
            kept = {id(b) for b in branches}
            for b in all_branches:
                if id(b) not in kept:
                    b.seq = NO_PAGES
        c = len(branches)
        if c == 0:
            return Expansion(parents=np.zeros(0, np.int32), children=np.zeros(0, np.int32), tokens=[], logprobs=[],
                             hidden=torch.empty(0, self.model.config.hidden_size, device=self.device),
                             values=None, finish_reasons=[], terminal=np.zeros(0, bool), discarded_tokens=discarded)
        hidden = torch.stack([h[r] for h, r in (b.hidden_ref for b in branches)])
        values = None
        if getattr(self.model, "value_head", None) is not None:
            with torch.inference_mode():
                values = self.model.value(hidden).float()
        parents = np.array([b.parent for b in branches], dtype=np.int32)
        terminal = np.array([b.finish in ("eos", "context") for b in branches], dtype=bool)
        priors = sibling_priors(parents, np.array([sum(b.logprobs) for b in branches], dtype=np.float64))
        tokens = [np.asarray(b.tokens, dtype=np.int32) for b in branches]
        indptr = np.zeros(c + 1, dtype=np.int64)
        np.cumsum([len(t) for t in tokens], out=indptr[1:])
        uniq, first = np.unique(parents, return_index=True)
        order = uniq[np.argsort(first)]  # parents in order of first appearance
        # branches are grouped by parent already (built parent by parent)
        counts = np.array([int((parents == p).sum()) for p in order], dtype=np.int32)
        page_seqs = np.array([NO_PAGES if term else b.seq for b, term in zip(branches, terminal)], dtype=np.int32)
        children = self.forest.add_children(order.astype(np.int32), counts, priors, np.concatenate(tokens), indptr,
                                            terminal=terminal, page_seqs=page_seqs)
        for b, term in zip(branches, terminal):
            if term:  # a terminal node is never expanded: its KV is dead weight
                self.page_table.free(b.seq)
        for i, ch in enumerate(children.tolist()):
            self._hidden[int(ch)] = (hidden, i)
        return Expansion(parents=parents, children=np.asarray(children, dtype=np.int32), tokens=tokens,
                         logprobs=[np.asarray(b.logprobs, dtype=np.float32) for b in branches], hidden=hidden,
                         values=values, finish_reasons=[b.finish for b in branches], terminal=terminal,
                         discarded_tokens=discarded)

    # ---------------------------------------------------------------- teacher forcing
    def _teacher_force(self, nodes: Sequence[int], token_lists: Sequence[Sequence[int]]):
        """Feed given tokens on forks of ``nodes``' sequences in one ragged forward.

        Returns (forked seqs, hidden at each list's last token [M, C]); the caller owns the seqs.
        """
        parents = np.asarray(nodes, dtype=np.int64)
        if len(token_lists) != parents.size:
            raise ValueError(f"need one token list per node: {parents.size} nodes, {len(token_lists)} lists")
        lists = [np.asarray(t, dtype=np.int32).reshape(-1) for t in token_lists]
        if any(t.size == 0 for t in lists):
            raise ValueError("every token list must hold at least one token")
        seqs: List[int] = []
        try:
            self._ensure_kv(parents)
            lengths = []
            for p, toks in zip(parents.tolist(), lists):
                pseq = int(self.forest.page_seq[p])
                lengths.append(int(self.page_table.num_tokens(pseq)))
                if lengths[-1] + toks.size > self.max_context:
                    raise ValueError(f"node {p} has {lengths[-1]} tokens; {toks.size} more exceed the context "
                                     f"of {self.max_context}")
                seqs.append(self.page_table.fork(pseq))
            counts = np.array([t.size for t in lists], dtype=np.int32)
            sq = np.asarray(seqs, dtype=np.int32)
            flat = np.concatenate(lists)
            self._make_room(lambda: self.page_table.can_append(sq, counts), "scoring")
            slots, src, dst = self.page_table.append(sq, counts, flat)
            self._run_copies(src, dst)
            self._note_usage()
            positions = np.concatenate([np.arange(L, L + t.size) for L, t in zip(lengths, lists)])
            hidden = self._forward(flat.tolist(), positions.tolist(), slots, seqs, counts)
            self.stats.tokens_prefilled += int(flat.size)
            return seqs, hidden[np.cumsum(counts) - 1]
        except BaseException:
            for s in seqs:
                self.page_table.free(s)
            raise
        finally:
            self._protected = set()

    def score_continuations(self, nodes: Sequence[int], token_lists: Sequence[Sequence[int]]) -> torch.Tensor:
        """Hidden states ``[M, C]`` after feeding ``token_lists[i]`` on top of ``nodes[i]``,
        without keeping them (e.g. a PRM step tag read on throwaway forks of the KV)."""
        nodes = (self._check_nodes(nodes, unique=False, allow_terminal=True) if len(nodes)
                 else np.zeros(0, dtype=np.int64))
        if nodes.size == 0:
            return torch.empty(0, self.model.config.hidden_size, device=self.device)
        seqs, hidden = self._teacher_force(nodes, token_lists)
        for s in seqs:
            self.page_table.free(s)
        return hidden

    def append_children(self, nodes: Sequence[int], token_lists: Sequence[Sequence[int]]) -> np.ndarray:
        """Add one child per node holding the given tokens (teacher forcing, no sampling).

        Used by a scorer model that mirrors the policy's tree, and for scoring fixed steps.
        Returns the new child ids (int32 [M]); each keeps its KV and its last hidden state.
        """
        parents = self._check_nodes(nodes, unique=False)
        seqs, hidden = self._teacher_force(parents, token_lists)
        try:
            lists = [np.asarray(t, dtype=np.int32).reshape(-1) for t in token_lists]
            indptr = np.zeros(len(lists) + 1, dtype=np.int64)
            np.cumsum([t.size for t in lists], out=indptr[1:])
            children = self.forest.add_children(parents.astype(np.int32), np.ones(parents.size, dtype=np.int32),
                                                np.ones(parents.size, dtype=np.float32), np.concatenate(lists),
                                                indptr, page_seqs=np.asarray(seqs, dtype=np.int32))
        except BaseException:
            for s in seqs:
                self.page_table.free(s)
            raise
        for i, ch in enumerate(children.tolist()):
            self._hidden[int(ch)] = (hidden, i)
        return np.asarray(children, dtype=np.int32)
