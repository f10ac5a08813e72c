"""The branches of one :meth:`ponder.Engine.expand` call as arrays, and the step-end rule.

:class:`StepBatch` keeps every branch's state in numpy arrays (parent, rng key parts, page
sequence, length, the step's tokens and log-probabilities so far, trie node, finish code), so a
decode step touches the whole batch with array operations and no per-branch Python loop.
:class:`StopRule` is a :class:`~ponder.expansion.StepStop` compiled for one engine: EOS and stop
ids as arrays, and the tokens that can complete a stop string, so the text of a step is decoded
only on the rare tokens that might end it.
"""

from __future__ import annotations

import weakref
from typing import List, Optional, Sequence, Set, Tuple

import numpy as np
import torch

from ponder.expansion import FINISH_REASONS, Branch, StepStop

RUNNING = 0  # finish code of a branch whose step goes on; FINISH_REASONS[i] has code i + 1
CODE = {reason: i + 1 for i, reason in enumerate(FINISH_REASONS)}


def stop_string_candidates(tokenizer, strings: Sequence[str], vocab_size: int) -> np.ndarray:
    """bool [vocab_size]: tokens after which the text of a step may newly contain a stop string.

    A stop string completed by token t ends in the text t adds, so t's text holds the string's
    last character. A token's text is taken alone and after a copy of itself (a SentencePiece
    word piece drops its leading space when first). Tokens whose text is empty, holds U+FFFD (a
    partial UTF-8 sequence that may merge with its neighbours) or cannot be decoded are always
    candidates. Only candidates need the step's text decoded.
    """
    last = {s[-1] for s in strings}
    out = np.ones(vocab_size, dtype=bool)
    ids = list(range(vocab_size))
    batch = getattr(tokenizer, "batch_decode", None)
    try:
        if batch is not None:
            alone, twice = batch([[t] for t in ids]), batch([[t, t] for t in ids])
        else:
            alone, twice = [tokenizer.decode([t]) for t in ids], [tokenizer.decode([t, t]) for t in ids]
    except Exception:  # ids the tokenizer cannot decode (a padded embedding): decode one by one
        alone, twice = [], []
        for t in ids:
            try:
                alone.append(tokenizer.decode([t]))
                twice.append(tokenizer.decode([t, t]))
            except Exception:
                alone.append(None)
                twice.append(None)
    for t, (a, aa) in enumerate(zip(alone, twice)):
        if a is None or aa is None or not a or not aa.startswith(a):
            continue  # stays a candidate
        added = aa[len(a):]
        if added and "\ufffd" not in a and "\ufffd" not in added and not any(c in a or c in added for c in last):
            out[t] = False
    return out


_CANDIDATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> {(strings, V): mask}


def cached_stop_string_candidates(tokenizer, strings: Tuple[str, ...], vocab_size: int) -> np.ndarray:
    """:func:`stop_string_candidates`, kept per tokenizer (for as long as it lives), stop strings
    and vocabulary size: building it decodes every token twice (about a second for 49k tokens)."""
    key = (tuple(strings), int(vocab_size))
    try:
        per_tokenizer = _CANDIDATES.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: no cache
        return stop_string_candidates(tokenizer, strings, vocab_size)
    if key not in per_tokenizer:
        per_tokenizer[key] = stop_string_candidates(tokenizer, strings, vocab_size)
    return per_tokenizer[key]


class StopRule:
    """When a step ends, for whole batches: :class:`StepStop` with the engine's EOS ids, its
    tokenizer (stop strings) and its context length."""

    def __init__(self, stop: StepStop, eos_token_ids: Set[int], tokenizer, vocab_size: int, max_context: int,
                 candidates: Optional[np.ndarray] = None):
        self.stop, self.tokenizer, self.max_context = stop, tokenizer, max_context
        self.eos = np.array(sorted(eos_token_ids) if stop.stop_on_eos else [], dtype=np.int32)
        self.stop_ids = np.array(stop.token_ids, dtype=np.int32)
        self.candidates = None
        if stop.strings:
            self.candidates = (candidates if candidates is not None
                               else stop_string_candidates(tokenizer, stop.strings, vocab_size))

    def codes(self, tokens: np.ndarray, counts: np.ndarray, lengths: np.ndarray, at_leaf: np.ndarray) -> np.ndarray:
        """int8 finish codes of rows whose step tokens are ``tokens[i, :counts[i]]`` (the last one
        just sampled), ``lengths[i]`` tokens in their KV before it, ``at_leaf[i]`` when a step
        constraint's whole allowed step is written. In priority order: EOS, a stop token, a stop
        string, ``max_step_tokens``, the model's context, then a finished allowed step (stop)."""
        n = counts.size
        last = tokens[np.arange(n), counts - 1]
        code = np.zeros(n, dtype=np.int8)
        # later assignments win, so apply the rules from the lowest priority up
        code[at_leaf] = CODE["stop"]
        code[lengths + 1 >= self.max_context] = CODE["context"]  # no room for another token
        code[counts >= self.stop.max_step_tokens] = CODE["length"]
        if self.candidates is not None:
            for i in np.flatnonzero(self.candidates[last]).tolist():
                text = self.tokenizer.decode(tokens[i, :counts[i]].tolist())
                if any(s in text for s in self.stop.strings):
                    code[i] = CODE["stop"]
        if self.stop_ids.size:
            code[np.isin(last, self.stop_ids)] = CODE["stop"]
        if self.eos.size:
            code[np.isin(last, self.eos)] = CODE["eos"]
        return code


class StepBatch:
    """Every branch of one expand call. Row i is child ``child_index[i]`` of parent handle
    ``parents[i]`` (position ``source[i]`` among the call's parents), drawing with rng id
    ``rng_ids[i]``, writing page sequence ``seqs[i]`` (``-1`` once freed), with ``lengths[i]``
    tokens in its KV before its next input token."""

    def __init__(self, parents: np.ndarray, source: np.ndarray, rng_ids: np.ndarray, child_index: np.ndarray,
                 seqs: np.ndarray, lengths: np.ndarray, trie_states: np.ndarray, max_tokens: int):
        n = parents.size
        self.parents, self.source, self.rng_ids, self.child_index = parents, source, rng_ids, child_index
        self.seqs, self.lengths, self.trie_states = seqs, lengths, trie_states
        self.tokens = np.zeros((n, max_tokens), dtype=np.int32)
        self.logprobs = np.zeros((n, max_tokens), dtype=np.float32)
        self.counts = np.zeros(n, dtype=np.int64)
        self.finish = np.zeros(n, dtype=np.int8)
        self.hiddens: List[torch.Tensor] = []  # hidden states of decode steps where some row finished
        self.hidden_at = np.full((n, 2), -1, dtype=np.int64)  # (index into hiddens, row) of a finished row
        # rows with the same group have the same parent and the same step tokens so far, hence
        # the same KV context and hidden state; ids are only compared among rows still running
        self.group = source.astype(np.int64)

    def __len__(self) -> int:
        return int(self.parents.size)

    def record(self, rows: np.ndarray, tokens: np.ndarray, logprobs: np.ndarray) -> None:
        """Append a sampled token (and its log-probability) to each of ``rows``' steps."""
        at = self.counts[rows]
        self.tokens[rows, at] = tokens
        self.logprobs[rows, at] = logprobs
        self.counts[rows] = at + 1

    def regroup(self, rows: np.ndarray, tokens: np.ndarray, vocab_size: int
                ) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """Split ``rows``' groups by the token each is about to feed (``tokens``, in
        ``[0, vocab_size)``); returns :meth:`groups_of` of the new groups."""
        if rows.size < 2:
            return None
        _, firsts, of_row = np.unique(self.group[rows] * vocab_size + tokens, return_index=True,
                                      return_inverse=True)
        self.group[rows] = of_row
        if firsts.size == rows.size:
            return None
        return firsts.astype(np.int64), of_row.reshape(-1).astype(np.int64)

    def part(self, rows: np.ndarray, apart: np.ndarray) -> None:
        """Give each of ``rows[apart]`` a group of its own (``rows`` are all the running rows)."""
        self.group[rows[apart]] = self.group[rows].max() + 1 + np.arange(apart.size)

    def groups_of(self, rows: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """``(firsts, of_row)``: ``rows[firsts[g]]`` is the first of ``rows`` in group g and
        ``of_row[i]`` is row ``rows[i]``'s group; None when every row is alone in its group."""
        if rows.size < 2:
            return None
        _, firsts, of_row = np.unique(self.group[rows], return_index=True, return_inverse=True)
        if firsts.size == rows.size:
            return None
        return firsts.astype(np.int64), of_row.reshape(-1).astype(np.int64)

    def step_tokens(self, i: int) -> List[int]:
        return self.tokens[i, :self.counts[i]].tolist()

    def branches(self, rows: Optional[np.ndarray] = None) -> List[Branch]:
        """Rows as :class:`Branch` records (for the per-token callback, and the commit)."""
        rows = np.arange(len(self)) if rows is None else rows
        # whole columns to Python at once: per-row numpy scalars and slices cost microseconds each
        counts = self.counts[rows].tolist()
        tokens, logprobs = self.tokens[rows].tolist(), self.logprobs[rows].tolist()
        columns = zip(counts, tokens, logprobs, *(a[rows].tolist() for a in (
            self.finish, self.parents, self.rng_ids, self.child_index, self.source, self.seqs, self.lengths,
            self.trie_states)))
        out = []
        for n, toks, lps, code, parent, rng_id, child, source, seq, length, trie_state in columns:
            out.append(Branch(parent=parent, rng_id=rng_id, child_index=child, source=source, seq=seq,
                              tokens=toks[:n], logprobs=lps[:n], length=length,
                              finish=None if code == RUNNING else FINISH_REASONS[code - 1], trie_state=trie_state))
        return out
