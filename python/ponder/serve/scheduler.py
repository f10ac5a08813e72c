"""Step-level continuous batching: one thread owns the engine and every live search session.

Requests become :class:`Job` s. The scheduler thread admits queued jobs into the session of
their :class:`~ponder.serve.protocol.SearchSpec` (one live session per spec: same algorithm,
options, scorer, sampling, step delimiter and seed), steps every session with active trees
(``session.step()``: one batched round over all of its trees, budgets applied), streams the
best-so-far answers and finishes jobs whose trees have all stopped. A job that arrives while
others are being searched joins at the next round. Nothing else touches the engine: the HTTP
side talks to this thread through :meth:`Scheduler.submit`, :meth:`Scheduler.cancel` and
:meth:`Scheduler.call`, and gets events through the job's ``sink``.

Memory: a job is admitted when the free (or reclaimable) pages cover its prompts and one round
of growth on top of what the active trees need for their next round; otherwise it waits in
FIFO order. When a round still runs the pool dry (``KVCacheFull``), the newest job of that
session gives its pages back and goes to the front of the queue (its search restarts; trees
depend only on prompt and seed, so it gets the same answer). A job that cannot fit alone ends
with a 503 error. Every tree is released when its job ends, so the pool returns to empty.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional

import numpy as np

from ponder.page_table import KVCacheFull
from ponder.serve import answers
from ponder.serve.backend import Backend
from ponder.serve.errors import APIError
from ponder.serve.protocol import ParsedRequest, SearchSpec

logger = logging.getLogger(__name__)

RETIRE_AFTER = 256  # trees per session before new jobs open a fresh one (node ids are never reused)
MAX_RESTARTS = 4  # a job pushed back by a full pool this often ends with a 503


@dataclass
class Job:
    """One HTTP request: its prompts (token ids), task problems and an event ``sink``.

    Events sent to ``sink`` (called on the scheduler thread; it must be thread-safe):
    ``("progress", prompt_index, info)`` when a streamed tree's best answer changes,
    ``("done", (choices, usage, ponder))`` and ``("error", APIError)``.
    """

    req: ParsedRequest
    token_lists: List[List[int]]
    problems: List[Any]
    sink: Callable[[tuple], None]
    created: float = field(default_factory=time.perf_counter)
    admitted: Optional[float] = None
    group: Optional["Group"] = None
    trees: list = field(default_factory=list)
    last_sent: Dict[int, int] = field(default_factory=dict)
    kv_pages_peak: int = 0
    restarts: int = 0
    finished: bool = False
    waited_for_kv: bool = False  # held back at least once because the KV pool could not take it


@dataclass
class Group:
    """One live session and the jobs searched in it."""

    spec: SearchSpec
    session: Any
    problems: Dict[int, Any]
    jobs: List[Job] = field(default_factory=list)
    trees_added: int = 0


class Scheduler:
    def __init__(self, backend: Backend):
        self.backend = backend
        self.engine = backend.engine
        self._inbox: "queue.Queue[tuple]" = queue.Queue()
        self._pending: Deque[Job] = deque()
        self._groups: List[Group] = []
        self._rounds = itertools.count()
        self.num_rounds = 0
        self.jobs_done = 0
        self.requests_waited_for_kv = 0  # requests held back at least once for lack of KV pages
        self._thread = threading.Thread(target=self._run, name="ponder-scheduler", daemon=True)

    # ------------------------------------------------------------------ any thread
    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._inbox.put(("submit", job))

    def cancel(self, job: Job) -> None:
        """End ``job`` (a client went away): its trees stop and give back their KV."""
        self._inbox.put(("cancel", job))

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the scheduler thread between rounds; its result arrives in the Future."""
        fut: Future = Future()
        self._inbox.put(("call", fn, fut))
        return fut

    def shutdown(self, timeout: float = 30.0) -> None:
        """Fail every queued and running job with a 503 and stop the thread."""
        self._inbox.put(("stop",))
        self._thread.join(timeout)

    # ------------------------------------------------------------------ scheduler thread
    def _run(self) -> None:
        while True:
            busy = bool(self._pending) or any(g.jobs for g in self._groups)
            try:
                msg = self._inbox.get(block=not busy)
            except queue.Empty:
                msg = None
            while msg is not None:
                if msg[0] == "stop":
                    self._stop_all()
                    return
                try:
                    self._handle(msg)
                except Exception:  # keep serving the others; the job's client gets no answer from here
                    logger.exception("scheduler command %s failed", msg[0])
                try:
                    msg = self._inbox.get_nowait()
                except queue.Empty:
                    msg = None
            self._admit()
            for g in list(self._groups):
                if any(t.stop_reason is None for j in g.jobs for t in j.trees):
                    self._step(g)

    def _handle(self, msg: tuple) -> None:
        if msg[0] == "submit":
            self._pending.append(msg[1])
        elif msg[0] == "cancel":
            job = msg[1]
            if job in self._pending:
                self._pending.remove(job)
            elif job.group is not None and not job.finished:
                self._drop(job)
                self.jobs_done += 1
        elif msg[0] == "call":
            fn, fut = msg[1], msg[2]
            try:
                fut.set_result(fn())
            except Exception as err:  # the caller sees it
                fut.set_exception(err)

    # ------------------------------------------------------------------ admission
    def _round_pages(self, spec: SearchSpec, trees: int) -> int:
        """Pages one round of ``trees`` trees may add: a partial page per new child plus its step."""
        opts = dict(spec.options)
        kids = {"mcts": opts.get("num_children", 1) * opts.get("leaves_per_tree", 1),
                "beam_search": max(opts.get("num_subtrees", 0), opts.get("width", 1)) * opts.get("expansion", 1),
                }.get(spec.session_algorithm, opts.get("n", 1))
        per_child = 1 + math.ceil(spec.max_step_tokens / self.engine.page_size)
        return trees * kids * per_child

    def _fits(self, job: Job) -> bool:
        st = self.engine.page_table.stats()
        room = st["free"] + st["evictable"]
        active = sum(self._round_pages(g.spec, sum(t.stop_reason is None for j in g.jobs for t in j.trees))
                     for g in self._groups)
        prompts = sum(math.ceil(len(t) / self.engine.page_size) for t in job.token_lists)
        return room - active >= prompts + self._round_pages(job.req.spec, len(job.token_lists))

    def _held_back(self, job: Job) -> None:
        if not job.waited_for_kv:
            job.waited_for_kv = True
            self.requests_waited_for_kv += 1

    def _admit(self) -> None:
        while self._pending:
            job = self._pending[0]
            alone = not any(g.jobs for g in self._groups)
            if not (alone or self._fits(job)):
                self._held_back(job)
                return
            self._pending.popleft()
            group = next((g for g in self._groups if g.spec == job.req.spec and g.trees_added < RETIRE_AFTER), None)
            try:
                if group is None:
                    problems: Dict[int, Any] = {}
                    group = Group(job.req.spec, self.backend.new_session(job.req.spec, problems), problems)
                    self._groups.append(group)
                trees = group.session.add(job.token_lists, job.req.budget)
            except KVCacheFull:
                if alone:
                    self._fail(job, _kv_full())
                else:  # wait for running jobs to give pages back
                    self._pending.appendleft(job)
                    self._held_back(job)
                self._forget_if_empty(group)
                return
            except (TypeError, ValueError) as err:
                self._fail(job, APIError(str(err), param="prompt" if job.req.kind == "completion" else "messages"))
                if group is not None:
                    self._forget_if_empty(group)
                continue
            except Exception:
                logger.exception("admitting a request failed")
                self._fail(job, APIError("internal error while admitting the request; see the server log",
                                         status=500, type="server_error", code="internal_error"))
                if group is not None:
                    self._forget_if_empty(group)
                continue
            for t, problem in zip(trees, job.problems):
                group.problems[t.index] = problem
            group.trees_added += len(trees)
            job.group, job.trees, job.admitted = group, list(trees), time.perf_counter()
            group.jobs.append(job)

    # ------------------------------------------------------------------ rounds
    def _step(self, g: Group) -> None:
        try:
            g.session.step()
        except (KVCacheFull, ValueError) as err:  # the pool cannot hold this round (or one tree's ask)
            self._shed(g, err)
            return
        except Exception:
            logger.exception("search round failed")
            for job in list(g.jobs):
                self._drop(job)
                self._fail(job, APIError("internal error while searching; see the server log", status=500,
                                         type="server_error", code="internal_error"))
            return
        self.num_rounds = next(self._rounds) + 1
        self._note_kv(g)
        for job in list(g.jobs):
            if job.req.stream:
                self._progress(job)
            if all(t.stop_reason is not None for t in job.trees):
                self._finish(job)

    def _shed(self, g: Group, err: Exception) -> None:
        """The newest job of ``g`` gives its pages back and waits for the others to finish; a job
        that fails alone gets the error (503 for a full pool, 400 for an ask the engine refuses)."""
        victim = g.jobs[-1]
        others = sum(len(x.jobs) for x in self._groups) > 1
        self._drop(victim)
        if not others or victim.restarts >= MAX_RESTARTS:
            if isinstance(err, KVCacheFull):
                self._fail(victim, _kv_full())
            else:
                self._fail(victim, APIError(f"ponder.options: the engine refused this search: {err}",
                                            param="ponder.options", code="request_too_large"))
            return
        victim.restarts += 1
        victim.trees, victim.group, victim.last_sent = [], None, {}
        victim.finished = False
        self._pending.appendleft(victim)

    def _note_kv(self, g: Group) -> None:
        """Per job, the peak of distinct KV pages its live nodes hold (shared pages count)."""
        f = g.session.forest
        alive = np.nonzero(np.asarray(f.alive).astype(bool))[0]
        if alive.size == 0:
            return
        roots = np.asarray(f.tree)[alive]
        for job in g.jobs:
            nodes = alive[np.isin(roots, [t.root for t in job.trees])]
            if nodes.size:
                pages = self.engine.distinct_pages(g.session.handles(nodes))
                job.kv_pages_peak = max(job.kv_pages_peak, pages)

    def _progress(self, job: Job) -> None:
        s = job.group.session
        for i, t in enumerate(job.trees):
            if not s.forest.is_alive(t.root):
                continue
            node = s.best_answer(t)
            if node == job.last_sent.get(i) or node == t.root:
                continue
            job.last_sent[i] = node
            job.sink(("progress", i, {"answer": s.text(node), "score": float(s.forest.path_score[node]),
                                      "verified": node in t.verified, "tokens_generated": int(t.usage.tokens),
                                      "expansions": int(t.usage.expansions), "round": int(t.usage.iterations)}))

    def _finish(self, job: Job) -> None:
        s = job.group.session
        results = [s.result(t) for t in job.trees]
        failed = next((r for r in results if r.stop_reason == "error"), None)
        if failed is not None:  # a verifier, scorer or constraint raised for this request's prompt
            self._drop(job)
            self.jobs_done += 1
            self._fail(job, APIError(f"the search failed: {getattr(failed, 'error', None)}", status=500,
                                     type="server_error", code="search_failed"))
            return
        now = time.perf_counter()
        extra = {"wall_time_s": round(now - job.created, 6), "queue_time_s": round(job.admitted - job.created, 6),
                 "peak_kv_bytes": job.kv_pages_peak * self.engine.kv_bytes_per_page, "restarts": job.restarts,
                 "waited_for_kv": job.waited_for_kv}
        payload = answers.report(job.req, results, sum(len(t) for t in job.token_lists), extra)
        self._drop(job)
        self.jobs_done += 1
        job.sink(("done", payload))

    def _drop(self, job: Job) -> None:
        """Stop and release the job's trees and take it out of its session."""
        g = job.group
        job.finished = True
        if g is None:
            return
        for t in job.trees:
            g.session.cancel(t)  # a finished tree keeps its stop reason; an active one is cancelled
            g.problems.pop(t.index, None)
        if job in g.jobs:
            g.jobs.remove(job)
        self._forget_if_empty(g)

    def _forget_if_empty(self, g: Group) -> None:
        if not g.jobs and g in self._groups:
            self._groups.remove(g)

    def _fail(self, job: Job, err: APIError) -> None:
        job.finished = True
        job.sink(("error", err))

    def _stop_all(self) -> None:
        err = APIError("the server is shutting down", status=503, type="server_error", code="shutting_down")
        for g in list(self._groups):
            for job in list(g.jobs):
                self._drop(job)
                self._fail(job, err)
        while self._pending:
            self._fail(self._pending.popleft(), err)

    # ------------------------------------------------------------------ stats (scheduler thread)
    def stats(self) -> Dict[str, Any]:
        """Engine KV figures and queue lengths; call through :meth:`call`."""
        kv = dict(self.engine.kv_stats())
        out = {"kv": kv, "num_sequences": self.engine.num_sequences,
               "active_requests": sum(len(g.jobs) for g in self._groups), "queued_requests": len(self._pending),
               "requests_waited_for_kv": self.requests_waited_for_kv,
               "sessions": len(self._groups), "rounds": self.num_rounds, "requests_done": self.jobs_done}
        prm = self.backend.prm
        if prm is not None and getattr(prm, "engine", None) is not None:
            out["prm_kv"] = dict(prm.engine.kv_stats())
            out["prm_num_sequences"] = prm.engine.num_sequences
        return out


def _kv_full() -> APIError:
    return APIError("the KV cache cannot hold this request's search even alone; restart the server with a larger "
                    "--max-kv-bytes or ask for fewer children per round (ponder.options)", status=503,
                    type="server_error", code="kv_cache_full")
