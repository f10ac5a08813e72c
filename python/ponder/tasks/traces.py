"""Training data for the Countdown policy + value model.

One :class:`Example` is one token sequence ``<bos> prompt step-lines [<eos>]`` with two kinds
of supervision:

* next-token targets. *Solution* traces, which the solver draws in varied orders (random
  descents, so both different solutions and different orders of the same solution's steps
  appear), are trained on all their step lines and the ``<eos>`` after the solving line.
  The other traces are trained only on what follows each ``=``: the arithmetic, which is
  right in every trace, while their choice of steps is not worth imitating;
* value: at the newline that ends the prompt and each step line, whether the target can still
  be reached from the numbers left (exact solver label), for every kind of trace. *Random*
  traces (uniformly random legal steps) and *detour* traces (a solution prefix, then random
  steps) supply the unsolvable states; :func:`collate` weights positives and negatives
  equally within a batch.

Example, prompt ``4 6 9 -> 30 any`` with steps ``9 - 4 = 5`` / ``6 * 5 = 30``:
value labels sit on the three newlines (1, 1, 1); the policy is trained on ``9 - 4 = 5\\n6 *
5 = 30\\n<eos>``.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Iterable, List, Optional, Sequence, Set, Tuple

import torch

from ponder.tasks import countdown, solver
from ponder.tasks.tokenizer import CharTokenizer

IGNORE_INDEX = -100
KINDS = ("solution", "random", "detour")
# Share of classic solution traces allowed one step more than the shortest solution.
SLACK_PROBABILITY = 0.25


@dataclasses.dataclass(frozen=True)
class Example:
    """One sequence. ``ids`` starts with ``<bos>``; each ``(start, end, weight)`` of
    ``target_spans`` trains positions ``start .. end - 1`` to predict their next token with
    that loss weight; ``value_positions`` index the newline ending each state,
    ``value_labels`` say whether that state is solvable (1.0) or not (0.0)."""

    ids: Tuple[int, ...]
    target_spans: Tuple[Tuple[int, int, float], ...]
    value_positions: Tuple[int, ...]
    value_labels: Tuple[float, ...]
    kind: str


def encode_trace(tokenizer: CharTokenizer, problem: countdown.Problem, lines: Sequence[str],
                 labels: Sequence[float], policy: bool, kind: str, prior_weight: float = 0.0) -> Example:
    """Tokenise ``problem``'s prompt and step ``lines``; ``labels[k]`` is the value label of the
    state after k lines (``len(lines) + 1`` of them).

    ``policy``: train every step token (and ``<eos>`` after a solving line) with weight 1.
    Otherwise the tokens after each line's ``=`` get weight 1 and the step choice before it
    (operands, operator) gets ``prior_weight`` (0: not trained).
    """
    if len(labels) != len(lines) + 1:
        raise ValueError(f"labels must hold len(lines) + 1 = {len(lines) + 1} values, got {len(labels)}")
    ids = tokenizer.encode(problem.prompt(), add_bos=True)
    positions = [len(ids) - 1]
    spans = []
    for line in lines:
        if not policy:
            start, eq = len(ids), len(ids) + line.index("=")
            if prior_weight > 0:
                spans.append((start - 1, eq, float(prior_weight)))  # predicts the line up to '='
            spans.append((eq, start + len(line), 1.0))  # predicts ' ', the result and '\n'
        ids += tokenizer.encode(line + "\n")
        positions.append(len(ids) - 1)
    if policy:
        if countdown.is_solved(problem, lines):
            ids.append(tokenizer.eos_token_id)
        spans = [(positions[0], len(ids) - 1, 1.0)]
    return Example(tuple(ids), tuple(spans), tuple(positions), tuple(float(x) for x in labels), kind)


def _random_walk(problem: countdown.Problem, start: Tuple[int, ...], rng: random.Random,
                 max_steps: int) -> List[solver.SolverStep]:
    """Up to ``max_steps`` uniformly random legal steps from ``start``, stopping when the
    classic target is hit or fewer than two numbers are left."""
    steps: List[solver.SolverStep] = []
    state = start
    while len(steps) < max_steps and len(state) >= 2:
        step, state = rng.choice(list(solver.moves(state)))
        steps.append(step)
        if not problem.all_numbers and step[3] == problem.target:
            break
    return steps


def _lines(steps: Iterable[solver.SolverStep]) -> List[str]:
    return [f"{a} {op} {b} = {c}" for a, op, b, c in steps]


def _labels(problem: countdown.Problem, lines: Sequence[str]) -> List[float]:
    return [float(countdown.is_solvable(problem, countdown.remaining(problem, lines[:k])))
            for k in range(len(lines) + 1)]


def make_example(problem: countdown.Problem, kind: str, rng: random.Random,
                 tokenizer: CharTokenizer, prior_weight: float = 0.0) -> Example:
    """One example of ``kind`` ("solution", "random" or "detour") for a solvable ``problem``;
    ``prior_weight`` as in :func:`encode_trace` for the random and detour kinds."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    start = tuple(sorted(problem.numbers))
    n = len(start)
    if kind == "solution":
        # Classic solutions may take detours (``x * 1 = x``, two steps where one would do);
        # teaching the policy the shortest lengths (sometimes one step more) keeps it direct.
        budget = None
        if not problem.all_numbers:
            budget = solver.shortest_length(problem.numbers, problem.target, False)
            budget = None if budget is None else budget + (rng.random() < SLACK_PROBABILITY)
        steps = solver.sample_solution(problem.numbers, problem.target, problem.all_numbers, rng, budget)
        if steps is None:
            raise ValueError(f"problem {problem} has no solution: policy traces need solvable problems")
        lines = _lines(steps)
        return encode_trace(tokenizer, problem, lines, [1.0] * (len(lines) + 1), True, kind)
    if kind == "random":
        lines = _lines(_random_walk(problem, start, rng, rng.randint(1, n - 1)))
    else:
        steps = solver.sample_solution(problem.numbers, problem.target, problem.all_numbers, rng) or []
        keep = rng.randint(0, max(0, len(steps) - 1))
        prefix = _lines(steps[:keep])
        state = countdown.remaining(problem, prefix)
        lines = prefix + _lines(_random_walk(problem, state, rng, rng.randint(1, max(1, len(state) - 1))))
    return encode_trace(tokenizer, problem, lines, _labels(problem, lines), False, kind, prior_weight)


class TraceSampler:
    """Seeded stream of examples over both rules and ``num_numbers`` numbers per problem.

    ``value_fraction`` of the examples are random / detour traces (value supervision only);
    the rest are solution traces. ``prior_weight`` trains the step choices of random / detour
    traces too, at that loss weight: they are always legal, so they teach which numbers are
    still available, at the cost of pulling the policy towards uniform legal steps. Each
    problem serves ``examples_per_problem`` consecutive
    examples: drawing a solvable problem costs about as much as an example, and the solver's
    memo is warm for its second use. Problems whose ``Problem.key()`` is in ``holdout`` are never
    drawn. ``max_len`` drops (and redraws) longer sequences so batches fit the model.
    """

    def __init__(self, tokenizer: CharTokenizer, seed: int, num_numbers: Tuple[int, int] = (3, 6),
                 min_value: int = 1, max_value: int = 9, min_target: int = 10, max_target: int = 99,
                 value_fraction: float = 0.4, max_len: int = 256, holdout: Iterable[tuple] = (),
                 examples_per_problem: int = 2, prior_weight: float = 0.0) -> None:
        if not 0.0 <= value_fraction <= 1.0:
            raise ValueError(f"value_fraction must lie in [0, 1], got {value_fraction!r}")
        if isinstance(examples_per_problem, bool) or not isinstance(examples_per_problem, int) \
                or examples_per_problem < 1:
            raise ValueError(f"examples_per_problem must be a positive int, got {examples_per_problem!r}")
        self.examples_per_problem = examples_per_problem
        self._problem: Optional[countdown.Problem] = None
        self._uses_left = 0
        self.tokenizer = tokenizer
        self.rng = random.Random(seed)
        self.knobs = dict(num_numbers=num_numbers, min_value=min_value, max_value=max_value,
                          min_target=min_target, max_target=max_target)
        countdown.generate(0, 0, **self.knobs)  # validates the knobs once, here
        if not 0.0 <= prior_weight <= 1.0:
            raise ValueError(f"prior_weight must lie in [0, 1], got {prior_weight!r}")
        self.value_fraction = value_fraction
        self.prior_weight = prior_weight
        self.max_len = max_len
        self.holdout: Set[tuple] = set(holdout)

    def problem(self) -> countdown.Problem:
        while True:
            rule = self.rng.random() < 0.5
            (problem,) = countdown.generate(1, self.rng.getrandbits(62), all_numbers=rule, **self.knobs)
            if problem.key() not in self.holdout:
                return problem

    def example(self) -> Example:
        while True:
            if self._uses_left == 0:
                self._problem, self._uses_left = self.problem(), self.examples_per_problem
            self._uses_left -= 1
            if self.rng.random() < self.value_fraction:
                kind = "random" if self.rng.random() < 0.5 else "detour"
            else:
                kind = "solution"
            ex = make_example(self._problem, kind, self.rng, self.tokenizer, self.prior_weight)
            if len(ex.ids) <= self.max_len:
                return ex

    def batch(self, size: int) -> dict:
        """One :func:`collate` batch of ``size`` examples."""
        return collate([self.example() for _ in range(size)], self.tokenizer.pad_token_id)

    def batches(self, size: int, group: int = 8) -> List[dict]:
        """``group`` batches of ``size`` examples drawn together and grouped by length, in
        shuffled order. Sequences run from ~30 to ~130 tokens; grouping cuts the padding of a
        batch from ~30% of its tokens to a few percent."""
        pool = sorted((self.example() for _ in range(size * group)), key=lambda ex: len(ex.ids))
        out = [collate(pool[i * size:(i + 1) * size], self.tokenizer.pad_token_id) for i in range(group)]
        self.rng.shuffle(out)
        return out


def collate(examples: Sequence[Example], pad_id: int) -> dict:
    """Pad examples to one batch.

    Returns ``input_ids [B, T]`` int64 (right-padded with ``pad_id``), ``targets [B, T]`` int64
    (next token inside the examples' target spans, ``IGNORE_INDEX`` elsewhere),
    ``target_weights [B, T]`` fp32 (the spans' weights, 0 elsewhere), ``value_index [M]``
    int64 (flat ``b * T + t`` positions), ``value_labels [M]`` fp32 and ``value_weights [M]``
    fp32 (positives and negatives each sum to 0.5 when both are present, else all sum to 1).
    """
    if not examples:
        raise ValueError("examples must not be empty")
    B, T = len(examples), max(len(ex.ids) for ex in examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.int64)
    targets = torch.full((B, T), IGNORE_INDEX, dtype=torch.int64)
    target_weights = torch.zeros(B, T, dtype=torch.float32)
    index, labels = [], []
    for b, ex in enumerate(examples):
        ids = torch.tensor(ex.ids, dtype=torch.int64)
        input_ids[b, :len(ids)] = ids
        for start, end, weight in ex.target_spans:
            targets[b, start:end] = ids[start + 1:end + 1]
            target_weights[b, start:end] = weight
        index += [b * T + t for t in ex.value_positions]
        labels += ex.value_labels
    value_labels = torch.tensor(labels, dtype=torch.float32)
    pos = value_labels > 0.5
    num_pos, num_neg = int(pos.sum()), int((~pos).sum())
    if num_pos and num_neg:
        weights = torch.where(pos, 0.5 / num_pos, 0.5 / num_neg)
    else:
        weights = torch.full_like(value_labels, 1.0 / max(1, len(labels)))
    return dict(input_ids=input_ids, targets=targets, target_weights=target_weights,
                value_index=torch.tensor(index, dtype=torch.int64),
                value_labels=value_labels, value_weights=weights)
