"""What ``ponder learn`` needs from a task: problems, prompts, a verifier, legal steps.

A :class:`Task` is any object with the members below (a ``typing.Protocol``: nothing to
inherit). The learning loop talks to a task only through them, so any task with an exact
checker can learn from its own searches; :class:`CountdownTask` is the built-in one.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any, Callable, Iterable, List, Optional, Protocol, Sequence, Set, runtime_checkable

import ponder
from ponder.tasks import countdown

ConstraintFn = Callable[[int, str], Optional[Iterable[int]]]


@runtime_checkable
class Task(Protocol):
    """The problems of one task and how to judge answers to them.

    ``name``: a short label for records. ``stop``: when a step ends (a :class:`ponder.StepStop`).
    ``max_steps``: the most steps a solution may take. A task may also offer
    ``anchor_sampler(tokenizer, seed, max_len)`` returning an object whose ``example()`` gives
    supervised :class:`~ponder.tasks.traces.Example` s to mix into training (optional).
    """

    name: str
    stop: "ponder.StepStop"
    max_steps: int

    def problems(self, num: int, seed: int) -> List[Any]:
        """``num`` training problems drawn with ``seed``; never one whose key is held out."""

    def validation(self, num: int) -> List[Any]:
        """The first ``num`` fixed problems kept out of training, on which rounds are compared."""

    def held_out_keys(self) -> Set[Any]:
        """Keys of every problem training must not see (validation and test sets)."""

    def prompt(self, problem: Any) -> str:
        """The text the policy is conditioned on."""

    def check(self, problem: Any, text: str) -> bool:
        """True when ``text`` (everything generated after the prompt) solves ``problem``."""

    def verifier(self, problems: Sequence[Any]) -> "ponder.Verifier":
        """The search's verifier for a batch: ends finished paths, 1 when solved, else 0."""

    def constraint(self, problems: Sequence[Any], tokenizer) -> Optional[ConstraintFn]:
        """Constrained decoding for a batch (``search(constraint=...)``), or None."""


class CountdownTask:
    """Countdown (:mod:`ponder.tasks.countdown`) as a learning task.

    Training problems mix both rules half and half, ``num_numbers`` numbers drawn from the given
    ranges (:meth:`from_model_dir` reads those of a model's training run). Held out: the model's
    own held-out set (the demo's test problems and value traces, rebuilt from ``train_seed``) and
    ``num_validation`` validation problems, four numbers, generator seed ``validation_seed`` (the
    seed the demo's search settings were tuned on), the two rules alternating.
    """

    name = "countdown"
    stop = ponder.StepStop(strings=("\n",), max_step_tokens=24)

    def __init__(self, tokenizer, num_numbers=(3, 5), min_value: int = 1, max_value: int = 9,
                 min_target: int = 10, max_target: int = 99, train_seed: int = 0, validation_seed: int = 1,
                 num_validation: int = 200, num_test_problems: int = 200, num_test_value_examples: int = 400,
                 max_len: int = 256) -> None:
        from ponder.tasks.evaluation import HeldOut

        if isinstance(num_validation, bool) or not isinstance(num_validation, int) or num_validation < 1:
            raise ValueError(f"num_validation must be a positive int, got {num_validation!r}")
        self.knobs = dict(min_value=min_value, max_value=max_value, min_target=min_target, max_target=max_target)
        countdown.generate(0, 0, num_numbers=num_numbers, **self.knobs)  # validates the ranges
        self.num_numbers = num_numbers
        self.max_steps = (max(num_numbers) if isinstance(num_numbers, tuple) else int(num_numbers)) + 1
        test = HeldOut.build(tokenizer, train_seed, num_test_problems, num_test_value_examples,
                             dict(self.knobs, num_numbers=num_numbers), max_len)
        half = (num_validation + 1) // 2
        classic = countdown.generate(half, validation_seed, num_numbers=4, all_numbers=False, **self.knobs)
        every = countdown.generate(num_validation - half, validation_seed, num_numbers=4, all_numbers=True,
                                   **self.knobs)
        self._validation = [p for pair in zip(classic, every) for p in pair] + classic[len(every):]
        self._keys = set(test.keys) | {p.key() for p in self._validation}

    @classmethod
    def from_model_dir(cls, path, tokenizer, **kwargs) -> "CountdownTask":
        """The task with the ranges and seed in a model directory's ``metrics.json`` (defaults
        when there is none); ``kwargs`` override them."""
        cfg, seed = {}, 0
        try:
            with open(os.path.join(os.fspath(path), "metrics.json")) as f:
                metrics = json.load(f)
            cfg, seed = metrics.get("config", {}), int(metrics.get("seed", 0))
        except (OSError, ValueError):  # no training record: the generator's default ranges
            pass
        knobs = {k: int(cfg[k]) for k in ("min_value", "max_value", "min_target", "max_target") if k in cfg}
        if "num_numbers" in cfg:
            knobs["num_numbers"] = tuple(int(x) for x in cfg["num_numbers"])
        return cls(tokenizer, **{"train_seed": seed, **knobs, **kwargs})

    def validation(self, num: int) -> List[countdown.Problem]:
        if isinstance(num, bool) or not isinstance(num, int) or not 1 <= num <= len(self._validation):
            raise ValueError(f"num must be an int in [1, {len(self._validation)}] (num_validation), got {num!r}")
        return self._validation[:num]

    def held_out_keys(self) -> Set[tuple]:
        return set(self._keys)

    def problems(self, num: int, seed: int) -> List[countdown.Problem]:
        rng = random.Random(seed)
        out: List[countdown.Problem] = []
        while len(out) < num:
            (p,) = countdown.generate(1, rng.getrandbits(62), num_numbers=self.num_numbers,
                                      all_numbers=rng.random() < 0.5, **self.knobs)
            if p.key() not in self._keys:
                out.append(p)
        return out

    def prompt(self, problem: countdown.Problem) -> str:
        return problem.prompt()

    def check(self, problem: countdown.Problem, text: str) -> bool:
        return countdown.check(problem, text).ok

    def verifier(self, problems: Sequence[countdown.Problem]) -> "ponder.Verifier":
        from ponder.tasks.demo import verifier

        return verifier(problems)

    def constraint(self, problems: Sequence[countdown.Problem], tokenizer) -> Optional[ConstraintFn]:
        from ponder.tasks.demo import legal_step_constraint

        return legal_step_constraint(problems, tokenizer)

    def anchor_sampler(self, tokenizer, seed: int, max_len: int):
        """Solver-labelled traces of the supervised recipe (:class:`~ponder.tasks.traces.TraceSampler`),
        mixed into each round's batches so that the value head keeps seeing exact labels."""
        from ponder.tasks.traces import TraceSampler

        return TraceSampler(tokenizer, seed, num_numbers=self.num_numbers, value_fraction=0.5, max_len=max_len,
                            holdout=self._keys, **self.knobs)
