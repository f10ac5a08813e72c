"""The policy-engine interface over an OpenAI-compatible ``/v1/completions`` server.

:class:`OpenAICompatible` lets ``ponder.search`` drive vLLM, SGLang, llama.cpp's ``llama-server``,
llama-cpp-python's server or any other server of that API instead of ponder's native
:class:`~ponder.Engine`. It keeps the same sequence handles; a handle's tokens and text live here,
its KV lives (or not) in the server's prefix cache.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ponder.backends.http import BackendError, RetryPolicy, request_json
from ponder.backends.responses import Sample, choices_of, parse_choice
from ponder.decoding import sibling_priors
from ponder.expansion import EngineStats, Expansion, SamplingParams, StepStop

logger = logging.getLogger(__name__)

# A 400 answer that means "fewer samples per request, please" (llama-server: "n_cmpl cannot be
# greater than the number of slots, please increase -np").
_TOO_MANY_SAMPLES = re.compile(r"n_cmpl|slots|\bn\b.*(greater|exceed|at most|must be)", re.IGNORECASE)


@dataclass
class _Record:
    ids: np.ndarray  # int32, the whole path: prompt then every step
    text: str  # the whole path as text (what a text-only server is sent)
    parent: Optional[int]
    step: tuple = ()  # this sequence's own step tokens (for distinct siblings)
    draws: int = 0  # children drawn here so far: the next child's index
    evicted: bool = False
    live_steps: Dict[tuple, int] = field(default_factory=dict)  # step tokens -> live child handle


def request_seed(seed: int, rng_id: int, child_index: int) -> int:
    """The server seed of the request whose first sample is child ``child_index`` of the sequence
    with rng id ``rng_id``: a 31-bit hash (every server takes it) of the three numbers."""
    h = hashlib.blake2b(f"{seed}:{rng_id}:{child_index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & 0x7FFFFFFF


class OpenAICompatible:
    """Search over any OpenAI-compatible ``/v1/completions`` endpoint, with ponder's engine API.

    The children of a sequence are the ``n`` samples of one completion request from the
    sequence's token ids (``prompt_ids=True``, for servers that take them: vLLM, SGLang,
    llama.cpp) or its text, with the step's stop strings, ``max_tokens = max_step_tokens``,
    ``logprobs`` for the priors (each child's probability normalised over its siblings, from the
    log-probabilities the server reports) and a seed derived from (seed, rng id, child index), so a
    server that honours seeds returns the same tree for the same seed. Requests for different
    parents go out concurrently (``max_concurrency``) so the server can batch them.

    KV reuse is the server's own prefix cache (start vLLM with ``--enable-prefix-caching``;
    llama.cpp caches per slot): ``evict`` and ``free`` only drop local records, and ``kv_stats``
    reports prompt tokens sent and, where the server reports them, cached prompt tokens (vLLM
    with ``--enable-prompt-tokens-details``). KV bytes are unknown here (0), so a
    ``Budget(max_kv_bytes=...)`` never fires.

    No hidden states or value head come back: ``Expansion.hidden`` is ``[C, 0]`` and ``values``
    None, so score steps with a :class:`ponder.Verifier`, a PRM on ponder's native engine
    (``TokenPairPRM(..., engine=native_engine)`` mirrors the tree by text) or ``scorer=None``.
    Constrained decoding (``allowed_tokens``) needs a per-token callback and is not available.

    Server differences handled: llama.cpp's chat-layout logprobs (with token ids) and its stop
    strings left out of the text (added back; when the server does not say which of several
    stop strings matched, the first is assumed); a cap on ``n`` (llama-server's parallel
    slots: a 400 answer halves the samples per request until accepted); a server that ignores
    ``n`` (llama-cpp-python: fewer choices than asked, so the rest is asked for one sample per
    request). ``echo`` is never relied on. When the server reports no token ids, a step's
    tokens are the local tokenizer's encoding of its text.

    Args:
        base_url: the server root, e.g. ``"http://127.0.0.1:8000"`` (``/v1/completions`` is added;
            a URL already ending in ``/v1`` is accepted too).
        model: the model name the server serves.
        tokenizer: the served model's tokenizer (``encode(str) -> ids``, ``decode(ids) -> str``),
            e.g. ``ponder.models.load_tokenizer(path)``.
        eos_token_ids: token ids that end a sequence (default: the tokenizer's ``eos_token_id``).
        max_context: the served context length; steps are cut to fit and a full context makes a
            node terminal (finish reason ``"context"``). None: no limit is enforced here.
        prompt_ids: send token ids rather than text as the prompt.
        max_concurrency: requests in flight at once.
        retry: timeouts and retries (:class:`ponder.backends.RetryPolicy`).
        api_key: sent as a bearer token when given.
        extra_body: more request fields for every request (e.g. ``{"repetition_penalty": 1.0}``).
    """

    def __init__(self, base_url: str, model: str, tokenizer, *, eos_token_ids: Optional[Sequence[int]] = None,
                 max_context: Optional[int] = None, prompt_ids: bool = True, max_concurrency: int = 16,
                 retry: RetryPolicy = RetryPolicy(), api_key: Optional[str] = None,
                 extra_body: Optional[dict] = None):
        if not isinstance(base_url, str) or not re.match(r"https?://", base_url):
            raise ValueError(f"base_url must be an http(s) URL such as 'http://127.0.0.1:8000', got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be the served model's name (a non-empty str), got {model!r}")
        if tokenizer is None or not (hasattr(tokenizer, "encode") and hasattr(tokenizer, "decode")):
            raise TypeError(f"tokenizer must have encode() and decode() (the served model's tokenizer), "
                            f"got {type(tokenizer).__name__}")
        if max_context is not None and (isinstance(max_context, bool) or not isinstance(max_context, int)
                                        or max_context < 2):
            raise ValueError(f"max_context must be None or an int >= 2, got {max_context!r}")
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
        if not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a ponder.backends.RetryPolicy, got {type(retry).__name__}")
        if extra_body is not None and not isinstance(extra_body, dict):
            raise TypeError(f"extra_body must be a dict of request fields, got {type(extra_body).__name__}")
        root = base_url.rstrip("/")
        root = root[:-3] if root.endswith("/v1") else root
        self.base_url, self.url = root, root + "/v1/completions"
        self.model, self.tokenizer, self.max_context = model, tokenizer, max_context
        if eos_token_ids is None:
            eos = getattr(tokenizer, "eos_token_id", None)
            eos_token_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        self.prompt_ids, self.retry, self.extra_body = bool(prompt_ids), retry, dict(extra_body or {})
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.stats = EngineStats()
        self.max_samples_per_request: Optional[int] = None  # learned from the server's answers
        self._records: Dict[int, _Record] = {}
        self._next = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="ponder-http")
        self._prompt_tokens = 0
        self._cached_tokens = 0

    # ---------------------------------------------------------------- sequences
    def _new(self, rec: _Record) -> int:
        h = self._next
        self._next += 1
        self._records[h] = rec
        return h

    def _get(self, handle, name: str = "seqs") -> _Record:
        rec = self._records.get(int(handle))
        if rec is None:
            raise KeyError(f"{name}: no live sequence {int(handle)} (freed, or never made by this backend)")
        return rec

    def prefill(self, prompts: Sequence, evict=None) -> np.ndarray:
        """New sequences for ``prompts`` (str, or token-id lists); returns their handles (int64 [R]).
        Nothing is sent yet: the server prefills a prompt with its first expansion."""
        if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__len__"):
            raise TypeError(f"prompts must be a list of prompts, got {type(prompts).__name__}")
        if len(prompts) == 0:
            raise ValueError("prompts is empty: give at least one prompt")
        recs = []
        for i, p in enumerate(prompts):
            if isinstance(p, str):
                ids, text = np.asarray(self.tokenizer.encode(p), dtype=np.int64), p
            else:
                ids = np.asarray(p)
                if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
                    raise TypeError(f"prompts[{i}] must be a str or a 1-D sequence of token ids, got {ids.dtype} "
                                    f"{ids.shape}")
                text = self.tokenizer.decode(ids.tolist())
            if ids.size == 0:
                raise ValueError(f"prompts[{i}] is empty: a prompt needs at least one token")
            if self.max_context is not None and ids.size >= self.max_context:
                raise ValueError(f"prompts[{i}] has {ids.size} tokens; max_context is {self.max_context} and the "
                                 f"step needs room to grow")
            recs.append(_Record(ids.astype(np.int32), text, None))
        return np.asarray([self._new(r) for r in recs], dtype=np.int64)

    def tokens(self, handle) -> np.ndarray:
        """int32 [n]: every token of the sequence (the prompt first)."""
        return self._get(handle, "handle").ids

    def text(self, handle) -> str:
        """The sequence's whole text (the prompt first)."""
        return self._get(handle, "handle").text

    def evict(self, seqs) -> int:
        """Mark sequences as not cached (the server's prefix cache decides for itself)."""
        n = 0
        for h in seqs:
            rec = self._records.get(int(h))
            if rec is not None and not rec.evicted:
                rec.evicted, n = True, n + 1
        self.stats.evicted_sequences += n
        return n

    def free(self, seqs) -> None:
        for h in seqs:
            rec = self._records.pop(int(h), None)
            if rec is not None and rec.parent is not None:
                parent = self._records.get(rec.parent)
                if parent is not None and parent.live_steps.get(rec.step) == int(h):
                    del parent.live_steps[rec.step]

    def has_kv(self, seqs) -> np.ndarray:
        return np.array([not self._get(h).evicted for h in seqs], dtype=bool)

    def kv_stats(self) -> Dict[str, int]:
        return {"kv_bytes_in_use": 0, "kv_bytes_peak": 0, "tokens_prefilled": self._prompt_tokens,
                "tokens_decoded": self.stats.tokens_decoded, "prefix_queries": self._prompt_tokens,
                "prefix_hits": self._cached_tokens, "model_calls": self.stats.model_calls,
                "requests": self.stats.model_calls}

    def close(self) -> None:
        """Stop the request threads (the object cannot expand afterwards)."""
        self._pool.shutdown(wait=True)

    # ---------------------------------------------------------------- expansion
    def expand(self, seqs: Sequence[int], num_children=1, stop: StepStop = StepStop(),
               sampling: SamplingParams = SamplingParams(), seed: int = 0, rng_ids: Optional[Sequence[int]] = None,
               allowed_tokens=None, distinct: bool = False, evict=None) -> Expansion:
        """Sample ``num_children`` (an int, or one per sequence) steps under each of ``seqs``; see
        :meth:`ponder.Engine.expand`. All requests finish before any child exists: when one fails
        for good (:class:`BackendError`), no child is made and the parents are as before."""
        if not isinstance(stop, StepStop):
            raise TypeError(f"stop must be a StepStop, got {type(stop).__name__}")
        if not isinstance(sampling, SamplingParams):
            raise TypeError(f"sampling must be a SamplingParams, got {type(sampling).__name__}")
        if allowed_tokens is not None:
            raise ValueError("allowed_tokens (constrained decoding) needs a per-token callback, which an HTTP "
                             "server cannot call: use ponder.Engine for constrained search")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
        handles = [int(h) for h in np.asarray(seqs, dtype=np.int64).reshape(-1)]
        if not handles:
            raise ValueError("seqs is empty: give at least one sequence to expand")
        if len(set(handles)) != len(handles):
            raise ValueError("seqs has duplicates; ask for more children per sequence instead")
        recs = [self._get(h) for h in handles]
        try:
            counts = np.broadcast_to(np.asarray(num_children), (len(handles),))
        except ValueError:
            raise ValueError(f"num_children must be an int or one per sequence ({len(handles)}), "
                             f"got {num_children!r}") from None
        if not np.issubdtype(counts.dtype, np.integer) or (counts < 1).any():
            raise ValueError(f"num_children must be integers >= 1, got {num_children!r}")
        rng = np.asarray(handles if rng_ids is None else rng_ids)
        if rng.shape != (len(handles),) or not np.issubdtype(rng.dtype, np.integer) or (rng < 0).any():
            raise ValueError(f"rng_ids must be {len(handles)} non-negative ints (one per sequence), got {rng_ids!r}")
        budgets = []
        for h, r in zip(handles, recs):
            room = stop.max_step_tokens if self.max_context is None else self.max_context - r.ids.size
            if room < 1:
                raise ValueError(f"sequence {h} fills max_context ({self.max_context} tokens)")
            budgets.append(min(stop.max_step_tokens, room))

        jobs = [self._pool.submit(self._sample_parent, r, int(k), int(rid), int(seed), stop, sampling, m)
                for r, k, rid, m in zip(recs, counts.tolist(), rng.tolist(), budgets)]
        errors = [j.exception() for j in jobs]  # waits for every request, so none is left running
        failed = next((e for e in errors if e is not None), None)
        if failed is not None:
            raise failed
        samples = [j.result() for j in jobs]
        exp = self._commit(handles, recs, samples, budgets, bool(distinct))
        for r, k in zip(recs, counts.tolist()):
            r.draws += k
            r.evicted = False  # the server has just seen this prefix
        return exp

    def _payload(self, rec: _Record, n: int, seed: int, stop: StepStop, sampling: SamplingParams,
                 max_tokens: int) -> dict:
        body = {
            "model": self.model,
            "prompt": rec.ids.tolist() if self.prompt_ids else rec.text,
            "n": n, "max_tokens": max_tokens, "temperature": float(sampling.temperature),
            "top_p": float(sampling.top_p), "logprobs": 1, "seed": seed, "stream": False,
            # vLLM / SGLang: keep the stop string, report token ids; others ignore these fields
            "include_stop_str_in_output": True, "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
            # top_k 0 and min_p 0 switch those filters off (llama.cpp defaults to 40 and 0.05)
            "top_k": int(sampling.top_k), "min_p": 0.0,
        }
        if stop.strings:
            body["stop"] = list(stop.strings)
        if stop.token_ids:
            body["stop_token_ids"] = list(stop.token_ids)
        if not stop.stop_on_eos:
            body["ignore_eos"] = True
        body.update(self.extra_body)
        return body

    def _post(self, body: dict) -> dict:
        with self._lock:
            self.stats.model_calls += 1
        doc = request_json(self.url, body, retry=self.retry, headers=self.headers)
        usage = doc.get("usage") if isinstance(doc.get("usage"), dict) else {}
        details = usage.get("prompt_tokens_details") if isinstance(usage.get("prompt_tokens_details"), dict) else {}
        with self._lock:
            self._prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self._cached_tokens += int(details.get("cached_tokens") or 0)
        return doc

    def _sample_parent(self, rec: _Record, k: int, rng_id: int, seed: int, stop: StepStop,
                       sampling: SamplingParams, max_tokens: int) -> List[Sample]:
        """``k`` samples from one parent, in as many requests as the server needs."""
        greedy = sampling.temperature == 0
        want = 1 if greedy else k  # greedy children are all the same step: sample once
        out: List[Sample] = []
        while len(out) < want:
            cap = self.max_samples_per_request
            ask = want - len(out) if cap is None else min(cap, want - len(out))
            body = self._payload(rec, ask, request_seed(seed, rng_id, rec.draws + len(out)), stop, sampling,
                                 max_tokens)
            try:
                doc = self._post(body)
            except BackendError as err:
                if err.status == 400 and ask > 1 and _TOO_MANY_SAMPLES.search(str(err)):
                    with self._lock:
                        self.max_samples_per_request = max(1, ask // 2)
                    logger.info("%s caps samples per request: now asking for %d", self.url, max(1, ask // 2))
                    continue
                raise
            choices = choices_of(doc, self.url)[:ask]
            if len(choices) < ask:  # n ignored or capped: ask for the rest, one request at a time
                with self._lock:
                    self.max_samples_per_request = len(choices)
            out += [parse_choice(c, self.url, stop.strings, self.eos_token_ids, stop.token_ids) for c in choices]
        return out * k if greedy else out

    def _step_ids(self, s: Sample) -> List[int]:
        if s.token_ids is None:
            return list(_encode(self.tokenizer, s.text))
        return list(s.token_ids) + (list(_encode(self.tokenizer, s.appended)) if s.appended else [])

    def _commit(self, handles, recs, samples, budgets, distinct: bool) -> Expansion:
        parents, index, children, tokens, logprobs, finishes = [], [], [], [], [], []
        discarded: Dict[int, int] = {}
        repeats = 0
        for i, (h, r, group, m) in enumerate(zip(handles, recs, samples, budgets)):
            seen = set(r.live_steps) if distinct else set()
            for s in group:
                step = self._step_ids(s)
                key = tuple(step)
                self.stats.tokens_decoded += len(step)
                if distinct and key in seen:
                    discarded[h] = discarded.get(h, 0) + len(step)
                    repeats += 1
                    continue
                seen.add(key)
                ids = np.concatenate([r.ids, np.asarray(step, dtype=np.int32)])
                finish = s.finish
                if finish == "length" and self.max_context is not None and ids.size >= self.max_context:
                    finish = "context"
                child = self._new(_Record(ids, r.text + s.text, h, key))
                r.live_steps.setdefault(key, child)
                parents.append(h)
                index.append(i)
                children.append(child)
                tokens.append(np.asarray(step, dtype=np.int32))
                logprobs.append(np.asarray(s.logprobs, dtype=np.float32))
                finishes.append(finish)
        if repeats:
            self.stats.extra["duplicate_children"] = self.stats.extra.get("duplicate_children", 0) + repeats
        parents_a = np.asarray(parents, dtype=np.int64)
        seq_lp = np.array([float(np.sum(lp, dtype=np.float64)) for lp in logprobs], dtype=np.float64)
        return Expansion(parents=parents_a, children=np.asarray(children, dtype=np.int64),
                         parent_index=np.asarray(index, dtype=np.int64), tokens=tokens, logprobs=logprobs,
                         hidden=torch.zeros(len(children), 0), values=None, finish_reasons=finishes,
                         terminal=np.array([f in ("eos", "context") for f in finishes], dtype=bool),
                         priors=sibling_priors(parents_a, seq_lp) if children else np.zeros(0, np.float32),
                         discarded_tokens=discarded)


def _encode(tokenizer, text: str) -> List[int]:
    """Token ids of a piece of generated text, without the special tokens a tokenizer may add
    at the start of a whole prompt."""
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:
        return list(tokenizer.encode(text))
