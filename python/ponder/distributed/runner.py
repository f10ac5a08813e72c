"""Search many problems in process or across Ray actors, writing resumable JSONL results.

:func:`run` splits the problems not yet in the results file into batches of
``spec.batch_size``. In process (``workers=0``) one :class:`~ponder.distributed.searcher.Searcher`
searches them in turn. With ``workers=K`` it starts K Ray actors, each building its own engine
once, and hands every idle actor the next batch; a batch's records are written as soon as it
comes back, so results stream in while the others work. An actor that dies (killed, out of
memory, its node lost) is replaced, and its unfinished batch goes back to the front of the queue
for another actor: every problem gets exactly one record.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, Dict, List, Optional

from tqdm.auto import tqdm

from ponder.distributed.records import ResultsFile, check_problems
from ponder.distributed.searcher import RunSpec, Searcher

logger = logging.getLogger(__name__)

ACTOR_PREFIX = "ponder-worker"


@dataclass
class RunSummary:
    """problems: in the input; skipped: already in the results file; written: new records;
    retried_batches: batches handed to another actor after theirs died; workers: Ray actors
    (0 in process); wall_s: seconds; problems_per_s: written / wall_s."""

    problems: int
    skipped: int
    written: int
    retried_batches: int
    workers: int
    wall_s: float

    @property
    def problems_per_s(self) -> float:
        return self.written / self.wall_s if self.wall_s > 0 else 0.0


def run(problems: List[dict], spec: RunSpec, out: str, *, workers: int = 0, ray_address: Optional[str] = None,
        progress: bool = True, max_attempts: int = 3,
        on_record: Optional[Callable[[dict], None]] = None) -> RunSummary:
    """Search every problem of ``problems`` (dicts with a unique ``"id"``, see
    :mod:`ponder.distributed.records`) whose id is not yet in the JSONL file ``out``, appending
    one record per problem. ``workers`` > 0 uses that many Ray actors (on the cluster at
    ``ray_address``, on the one this process already joined, or on a new local one);
    ``max_attempts`` bounds how often one batch may be lost with its actor before the run fails.
    ``on_record`` is called with each record after it is written."""
    if not isinstance(spec, RunSpec):
        raise TypeError(f"spec must be a ponder.distributed.RunSpec, got {type(spec).__name__}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0 (0: in process), got {workers!r}")
    if ray_address is not None and workers == 0:
        raise ValueError("ray_address needs workers >= 1: without workers the run stays in process")
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
    check_problems(problems, spec.task)
    t0 = time.perf_counter()
    with ResultsFile(out) as results:
        todo = [p for p in problems if p["id"] not in results]
        batches = [todo[i:i + spec.batch_size] for i in range(0, len(todo), spec.batch_size)]
        bar = tqdm(total=len(todo), unit="problem", desc="ponder run", disable=not progress)
        state = {"written": 0, "verified": 0}

        def write(records: List[dict]) -> None:
            for rec in records:
                if results.write(rec):
                    state["written"] += 1
                    state["verified"] += int(bool(rec.get("verified")))
                    if on_record is not None:
                        on_record(rec)
            bar.update(len(records))
            if "verified" in records[0]:
                bar.set_postfix(verified=state["verified"])

        try:
            if workers == 0:
                retried = 0
                if batches:
                    searcher = Searcher(spec)
                    for b in batches:
                        write(searcher.search(b))
            else:
                retried = _run_ray(batches, spec, workers, ray_address, write, bar, max_attempts)
        finally:
            bar.close()
    return RunSummary(problems=len(problems), skipped=len(problems) - len(todo), written=state["written"],
                      retried_batches=retried, workers=workers, wall_s=time.perf_counter() - t0)


def _worker_class(ray):
    class Worker:
        def __init__(self, spec: RunSpec):
            self.searcher = Searcher(spec)

        def search(self, problems: List[dict]) -> List[dict]:
            return self.searcher.search(problems)

    return ray.remote(num_cpus=1, max_restarts=0)(Worker)


def _run_ray(batches, spec: RunSpec, workers: int, address: Optional[str], write, bar, max_attempts: int) -> int:
    try:
        import ray
    except ImportError:
        raise ImportError("workers need Ray: pip install 'ponder[distributed]' (or run without --workers)") from None
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    started_here = not ray.is_initialized()
    if started_here:
        kwargs = {"address": address} if address else {"num_cpus": workers}
        ray.init(log_to_driver=False, **kwargs)
    Worker = _worker_class(ray)
    tag = f"{ACTOR_PREFIX}-{os.getpid()}-{int(time.time() * 1000) % 10**8}"
    made = 0

    def start():
        nonlocal made
        made += 1
        return Worker.options(name=f"{tag}-{made}").remote(spec)

    queue: Deque[int] = deque(range(len(batches)))
    attempts: Dict[int, int] = {}
    idle = [start() for _ in range(min(workers, len(batches)))]
    inflight: Dict[object, tuple] = {}
    retried = 0
    try:
        while queue or inflight:
            while idle and queue:
                actor, b = idle.pop(), queue.popleft()
                attempts[b] = attempts.get(b, 0) + 1
                inflight[actor.search.remote(batches[b])] = (actor, b)
            bar.set_description(f"ponder run ({len(inflight)} workers)")
            (ref,), _ = ray.wait(list(inflight), num_returns=1)
            actor, b = inflight.pop(ref)
            try:
                records = ray.get(ref)
            except (ActorDiedError, ActorUnavailableError, RayActorError) as err:
                if attempts[b] >= max_attempts:
                    raise RuntimeError(f"batch {b} ({len(batches[b])} problems, first id {batches[b][0]['id']!r}) "
                                       f"was lost with its worker {attempts[b]} times; last error: {err}") from err
                logger.warning("a worker died (%s); its %d problems go to another", type(err).__name__, len(batches[b]))
                ray.kill(actor)
                queue.appendleft(b)
                idle.append(start())
                retried += 1
                continue
            write(records)
            idle.append(actor)
    finally:
        for actor in idle + [a for a, _ in inflight.values()]:
            ray.kill(actor)
        if started_here:
            ray.shutdown()
    return retried
