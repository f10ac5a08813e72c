"""One worker's share of a run: a model and one engine, searching batches of problems.

A :class:`RunSpec` says what to search and how; it is small and picklable, so each Ray actor
builds its own :class:`Searcher` (model, tokenizer, engine) from it once and then searches the
batches it is handed. A problem's search tree depends only on the seed and its prompt, never on
the batch it is searched in, so a run gives the same records however it is split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional

from ponder.distributed.records import TASKS

ALGORITHMS = ("mcts", "beam_search", "best_of_n")


@dataclass(frozen=True)
class RunSpec:
    """What every worker searches with.

    task: ``"countdown"`` (the built-in task: its verifier and legal-step constraint, the value
        head as scorer) or ``"text"`` (prompts for any model ponder loads; steps end at a blank
        line; the value head scores steps when the model has one, else every step scores 0.5).
    model: a checkpoint directory or ``.gguf`` file; for Countdown None is the bundled model.
    algorithm, budget: MCTS expansions, beam width or N.
    seed: the search seed. batch_size: problems per search call on a worker.
    max_step_tokens, max_steps, temperature: the text task's step length, steps per path and
        sampling temperature (Countdown uses the demo's settings).
    threads: torch threads per worker.
    """

    task: str = "countdown"
    model: Optional[str] = None
    algorithm: str = "mcts"
    budget: int = 16
    seed: int = 0
    batch_size: int = 8
    max_step_tokens: int = 128
    max_steps: int = 8
    temperature: float = 1.0
    threads: int = 1

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task == "text" and not self.model:
            raise ValueError("the text task needs a model (a checkpoint directory or .gguf file)")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        for name in ("budget", "batch_size", "max_step_tokens", "max_steps", "threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if not (self.temperature >= 0):
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")


class Searcher:
    """The model, tokenizer and engine of one worker (built once), searching batches."""

    def __init__(self, spec: RunSpec):
        import torch

        import ponder

        self.spec = spec
        torch.set_num_threads(spec.threads)
        if spec.task == "countdown":
            from ponder.tasks.demo import load_model

            self.model, self.tokenizer = load_model(spec.model)
            self.engine = ponder.Engine(self.model, self.tokenizer, num_pages=8192, page_size=16)
        else:
            from ponder.models import load, load_tokenizer

            self.model, self.tokenizer = load(spec.model), load_tokenizer(spec.model)
            self.engine = ponder.Engine(self.model, self.tokenizer, max_kv_bytes=1 << 30)

    def search(self, problems: List[dict]) -> List[dict]:
        """Search ``problems`` in one batched call; one record per problem, in order."""
        t0 = time.perf_counter()
        if self.spec.task == "countdown":
            results, verified = self._countdown(problems)
        else:
            results, verified = self._text(problems), [None] * len(problems)
        wall = time.perf_counter() - t0
        records = []
        for p, r, ok in zip(problems, results, verified):
            rec = {"id": p["id"], "answer": r.answer}
            if ok is not None:
                rec["verified"] = bool(ok)
            rec["score"] = float(r.score)
            rec["stop_reason"] = r.stop_reason
            rec["stats"] = {"tokens_generated": int(r.stats["tokens_generated"]),
                            "expansions": int(r.stats["expansions"]), "iterations": int(r.stats["iterations"]),
                            "batch_size": len(problems), "batch_wall_s": round(wall, 4)}
            records.append(rec)
            r.release()  # the record keeps what matters; the KV goes back to the engine
        return records

    def _countdown(self, problems: List[dict]):
        import ponder
        from ponder.tasks import countdown
        from ponder.tasks.demo import (STEP_STOP, beam_strategy, best_of_n_strategy, legal_step_constraint,
                                       mcts_strategy, verifier)

        probs = [countdown.Problem(tuple(d["numbers"]), int(d["target"]), bool(d.get("all_numbers", False)))
                 for d in problems]
        make = {"mcts": mcts_strategy, "beam_search": beam_strategy, "best_of_n": best_of_n_strategy}
        s = make[self.spec.algorithm](self.spec.budget)
        found = ponder.search([p.prompt() for p in probs], self.engine, scorer="value", algorithm=s.algorithm,
                              budget=s.budget, seed=self.spec.seed, verifier=verifier(probs), stop=STEP_STOP,
                              sampling=ponder.SamplingParams(temperature=s.temperature), progress=False,
                              constraint=legal_step_constraint(probs, self.tokenizer), distinct=s.distinct,
                              **s.options)
        return found, [countdown.check(p, r.answer).ok for p, r in zip(probs, found)]

    def _text(self, problems: List[dict]):
        import ponder

        spec = self.spec
        options = {"mcts": dict(num_children=4), "beam_search": dict(width=spec.budget, max_steps=spec.max_steps),
                   "best_of_n": dict(n=spec.budget, max_steps=spec.max_steps)}[spec.algorithm]
        budget = (ponder.Budget(max_expansions=spec.budget) if spec.algorithm == "mcts"
                  else ponder.Budget(max_iterations=spec.max_steps))
        scorer = "value" if getattr(self.model, "value_head", None) is not None else None
        return ponder.search([p["prompt"] for p in problems], self.engine, scorer=scorer, algorithm=spec.algorithm,
                             budget=budget, seed=spec.seed,
                             stop=ponder.StepStop(strings=("\n\n",), max_step_tokens=spec.max_step_tokens),
                             sampling=ponder.SamplingParams(temperature=spec.temperature), progress=False,
                             **options)
