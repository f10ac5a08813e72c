"""Training traces: token layout, exact value labels, varied solutions, batching."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from oracle import brute_solvable
from ponder.tasks import countdown as cd
from ponder.tasks.tokenizer import CharTokenizer
from ponder.tasks.traces import IGNORE_INDEX, KINDS, TraceSampler, collate, encode_trace, make_example

TOK = CharTokenizer()
NEWLINE = TOK.encode("\n")[0]


def test_encode_trace_layout():
    p = cd.Problem((4, 6, 9), 30)
    lines = ["9 - 4 = 5", "6 * 5 = 30"]
    ex = encode_trace(TOK, p, lines, [1, 1, 1], policy=True, kind="solution")
    assert ex.ids[0] == TOK.bos_token_id and ex.ids[-1] == TOK.eos_token_id
    assert TOK.decode(ex.ids) == p.prompt() + "9 - 4 = 5\n6 * 5 = 30\n"
    assert ex.value_positions == (len(p.prompt()), len(p.prompt()) + 10, len(p.prompt()) + 21)
    assert all(ex.ids[i] == NEWLINE for i in ex.value_positions)
    assert ex.target_spans == ((ex.value_positions[0], len(ex.ids) - 1, 1.0),)
    unsolved = encode_trace(TOK, p, lines[:1], [1, 1], policy=True, kind="solution")
    assert unsolved.ids[-1] == NEWLINE  # no <eos> before the problem is solved
    value_only = encode_trace(TOK, p, lines, [1, 1, 0], policy=False, kind="random")
    assert value_only.value_labels == (1.0, 1.0, 0.0)
    # only the arithmetic is trained: from each '=' to the last digit of its result
    trained = [(TOK.decode(value_only.ids[s + 1:e + 1]), w) for s, e, w in value_only.target_spans]
    assert trained == [(" 5\n", 1.0), (" 30\n", 1.0)]
    # with a prior weight the step choices are trained too, at that weight
    prior = encode_trace(TOK, p, lines, [1, 1, 0], policy=False, kind="random", prior_weight=0.25)
    trained = [(TOK.decode(prior.ids[s + 1:e + 1]), w) for s, e, w in prior.target_spans]
    assert trained == [("9 - 4 =", 0.25), (" 5\n", 1.0), ("6 * 5 =", 0.25), (" 30\n", 1.0)]
    with pytest.raises(ValueError, match="labels must hold"):
        encode_trace(TOK, p, lines, [1, 1], policy=False, kind="random")


@pytest.mark.parametrize("kind", KINDS)
def test_examples_carry_exact_labels(kind):
    rng = random.Random(5)
    for seed in range(40):
        (p,) = cd.generate(1, seed, num_numbers=(3, 4), max_value=12, all_numbers=bool(seed % 2))
        ex = make_example(p, kind, rng, TOK)
        text = TOK.decode(ex.ids)
        assert text.startswith(p.prompt())
        lines = text[len(p.prompt()):].split("\n")[:-1]
        assert len(ex.value_labels) == len(lines) + 1
        for k, label in enumerate(ex.value_labels):
            state = cd.remaining(p, lines[:k])
            assert label == float(brute_solvable(list(state), p.target, p.all_numbers)), (p, lines[:k])
        if kind == "solution":
            assert cd.check(p, "\n".join(lines)).ok and ex.ids[-1] == TOK.eos_token_id
            assert ex.target_spans == ((ex.value_positions[0], len(ex.ids) - 1, 1.0),)
        else:
            assert len(ex.target_spans) == len(lines)


def test_classic_solution_traces_are_short():
    p = cd.Problem((1, 2, 3, 100), 6)
    rng = random.Random(0)
    lengths = Counter(TOK.decode(make_example(p, "solution", rng, TOK).ids).count("\n") - 1 for _ in range(40))
    assert set(lengths) <= {1, 2} and lengths[1] > lengths[2]


def test_solution_traces_vary():
    p = cd.Problem((1, 2, 3, 4), 24, all_numbers=True)
    rng = random.Random(0)
    texts = {TOK.decode(make_example(p, "solution", rng, TOK).ids) for _ in range(30)}
    assert len(texts) >= 8


def test_sampler_is_seeded_mixes_rules_and_sizes_and_skips_holdout():
    a = TraceSampler(TOK, seed=3)
    b = TraceSampler(TOK, seed=3)
    first = [a.example() for _ in range(60)]
    assert first == [b.example() for _ in range(60)]
    kinds = Counter(ex.kind for ex in first)
    assert kinds["solution"] > kinds["random"] > 0 and kinds["detour"] > 0
    problems = [cd.Problem.from_prompt(TOK.decode(ex.ids)) for ex in first]
    assert {p.all_numbers for p in problems} == {False, True}
    assert {len(p.numbers) for p in problems} == {3, 4, 5, 6}
    labels = Counter(lab for ex in first for lab in ex.value_labels)
    assert labels[0.0] > 0 and labels[1.0] > 0
    held = {p.key() for p in problems[:30]}
    c = TraceSampler(TOK, seed=3, holdout=held)
    assert all(c.problem().key() not in held for _ in range(200))
    short = TraceSampler(TOK, seed=3, max_len=70)
    assert all(len(short.example().ids) <= 70 for _ in range(30))
    with pytest.raises(ValueError, match="value_fraction"):
        TraceSampler(TOK, seed=0, value_fraction=1.5)
    with pytest.raises(ValueError, match="prior_weight"):
        TraceSampler(TOK, seed=0, prior_weight=-0.1)
    with pytest.raises(ValueError, match="examples_per_problem"):
        TraceSampler(TOK, seed=0, examples_per_problem=0)
    with pytest.raises(ValueError, match="num_numbers"):
        TraceSampler(TOK, seed=0, num_numbers=(1, 3))


def test_collate_targets_and_balanced_weights():
    p = cd.Problem((4, 6, 9), 30)
    solved = encode_trace(TOK, p, ["9 - 4 = 5", "6 * 5 = 30"], [1, 1, 1], True, "solution")
    failed = encode_trace(TOK, p, ["9 + 6 = 15"], [1, 0], False, "random", prior_weight=0.5)
    batch = collate([solved, failed], TOK.pad_token_id)
    B, T = batch["input_ids"].shape
    assert (B, T) == (2, len(solved.ids))
    assert batch["input_ids"][1, len(failed.ids):].eq(TOK.pad_token_id).all()
    targets = batch["targets"]
    start = solved.value_positions[0]
    assert targets[0, :start].eq(IGNORE_INDEX).all()
    assert targets[0, start:T - 1].tolist() == list(solved.ids[start + 1:])
    assert targets[0, T - 1] == IGNORE_INDEX
    (s0, e0, _), (s1, e1, _) = failed.target_spans
    assert TOK.decode(targets[1, s0:e1].tolist()) == "9 + 6 = 15\n"
    assert targets[1, :s0].eq(IGNORE_INDEX).all() and targets[1, e1:].eq(IGNORE_INDEX).all()
    weights = batch["target_weights"]
    assert weights[1, s0:e0].eq(0.5).all() and weights[1, s1:e1].eq(1.0).all()
    assert weights[0, start:T - 1].eq(1.0).all()
    assert weights.eq(0).logical_or(targets.ne(IGNORE_INDEX)).all()  # weight only where trained
    assert targets.ne(IGNORE_INDEX).logical_and(weights.eq(0)).sum() == 0
    flat = batch["input_ids"].view(-1)[batch["value_index"]]
    assert flat.eq(NEWLINE).all() and batch["value_index"].tolist()[3:] == [T + i for i in failed.value_positions]
    labels, weights = batch["value_labels"], batch["value_weights"]
    assert labels.tolist() == [1, 1, 1, 1, 0]
    # positives and negatives each carry half of the weight
    torch.testing.assert_close(weights[labels > 0.5].sum(), torch.tensor(0.5))
    torch.testing.assert_close(weights[labels < 0.5].sum(), torch.tensor(0.5))
    only_pos = collate([solved], TOK.pad_token_id)["value_weights"]
    torch.testing.assert_close(only_pos, torch.full((3,), 1 / 3))
    with pytest.raises(ValueError, match="must not be empty"):
        collate([], 0)
