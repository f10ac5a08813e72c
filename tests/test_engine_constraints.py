"""Engine.expand's constrained decoding (allowed_tokens) and distinct children, checked
against the model's own logits on a tiny random-weight model."""

import numpy as np
import pytest
import torch

from ponder.engine import SamplingParams
from test_engine import ALPHABET, NEWLINE, PROMPTS, STOP, full_hidden, make_engine, tiny_model

DIGITS = [ALPHABET.index(c) for c in "0123456789"]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def digits_then_newline(node, step_tokens):
    """Up to three digits, then a newline: every step is a 1-3 digit number."""
    return DIGITS if len(step_tokens) < 3 else [NEWLINE]


def test_every_sampled_token_is_allowed_and_logprobs_are_renormalised(model):
    eng = make_engine(model)
    roots = eng.prefill(PROMPTS)
    calls = []

    def allowed(node, step_tokens):
        calls.append((node, tuple(step_tokens)))
        return digits_then_newline(node, step_tokens)

    exp = eng.expand(roots, num_children=4, stop=STOP, sampling=SamplingParams(temperature=1.0), seed=5,
                     allowed_tokens=allowed)
    assert len(exp.children) == 12
    for p, toks, lps in zip(exp.parents.tolist(), exp.tokens, exp.logprobs):
        toks = toks.tolist()
        assert toks[-1] == NEWLINE and 1 <= len(toks) <= 4
        assert all(t in DIGITS for t in toks[:-1])
        # each log-probability is that of the constrained distribution: log-softmax over the
        # allowed tokens of the model's logits at that position
        path = eng.tokens(p).tolist()
        for k, (t, lp) in enumerate(zip(toks, lps.tolist())):
            logits = model.logits(full_hidden(model, path + toks[:k]))[0]
            ok = torch.tensor(digits_then_newline(p, toks[:k]))
            want = torch.log_softmax(logits[ok], -1)[ok.tolist().index(t)]
            # paged vs one-shot fp32 attention differ in summation order only (~1e-6)
            assert lp == pytest.approx(float(want), abs=1e-4)
    assert {c[0] for c in calls} == set(roots.tolist())


def test_greedy_picks_the_best_allowed_token(model):
    eng = make_engine(model)
    (root,) = eng.prefill(PROMPTS[:1])
    logits = model.logits(full_hidden(model, eng.tokens(int(root)).tolist()))[0]
    best_digit = DIGITS[int(logits[DIGITS].argmax())]
    exp = eng.expand([root], 1, stop=STOP, sampling=SamplingParams(temperature=0.0),
                     allowed_tokens=digits_then_newline)
    assert int(exp.tokens[0][0]) == best_digit


def test_no_constraint_when_the_callback_returns_none(model):
    a, b = make_engine(model), make_engine(model)
    ra, rb = a.prefill(PROMPTS), b.prefill(PROMPTS)
    ea = a.expand(ra, 3, stop=STOP, seed=2)
    eb = b.expand(rb, 3, stop=STOP, seed=2, allowed_tokens=lambda node, toks: None)
    assert [t.tolist() for t in ea.tokens] == [t.tolist() for t in eb.tokens]
    for x, y in zip(ea.logprobs, eb.logprobs):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
    "allowed,exc,match",
    [
        (lambda n, t: [], ValueError, "returned no token"),
        (lambda n, t: [len(ALPHABET)], ValueError, "outside"),
        (lambda n, t: [-1], ValueError, "outside"),
        ("digits", TypeError, "allowed_tokens must be callable"),
    ],
)
def test_bad_constraints_are_refused_and_nothing_is_lost(model, allowed, exc, match):
    eng = make_engine(model)
    roots = eng.prefill(PROMPTS)
    before_seqs, before_pages = eng.num_sequences, eng.page_table.stats()["used"]
    with pytest.raises(exc, match=match):
        eng.expand(roots, 2, stop=STOP, allowed_tokens=allowed)
    assert eng.num_sequences == before_seqs
    assert eng.page_table.stats()["used"] == before_pages
    assert len(eng.expand(roots, 2, stop=STOP).children) == 6


def one_line(node, step_tokens):
    """Only the step '7\\n' is possible."""
    return [ALPHABET.index("7")] if not step_tokens else [NEWLINE]


def test_distinct_drops_repeats_and_charges_their_tokens(model):
    eng = make_engine(model)
    (root,) = eng.prefill(PROMPTS[:1])
    used = eng.page_table.stats()["used"]
    exp = eng.expand([root], 5, stop=STOP, allowed_tokens=one_line, distinct=True)
    assert len(exp.children) == 1 and exp.tokens[0].tolist() == [ALPHABET.index("7"), NEWLINE]
    assert exp.discarded_tokens == {int(root): 8}  # four dropped copies of a 2-token step
    assert eng.stats.extra["duplicate_children"] == 4
    assert float(exp.priors[0]) == pytest.approx(1.0)
    # a repeat of an existing child is dropped too: no child at all, and no page kept for it
    again = eng.expand([root], 2, stop=STOP, allowed_tokens=one_line, distinct=True)
    assert len(again.children) == 0 and again.discarded_tokens == {int(root): 4}
    assert eng.num_sequences == 2  # the prompt and its one child
    eng.free(exp.children)
    assert eng.page_table.stats()["used"] == used
    # once the child is gone its step may be drawn again
    third = eng.expand([root], 1, stop=STOP, allowed_tokens=one_line, distinct=True)
    assert len(third.children) == 1


def test_distinct_draws_fresh_samples_on_a_second_call(model):
    eng = make_engine(model)
    (root,) = eng.prefill(PROMPTS[:1])
    first = eng.expand([root], 3, stop=STOP, seed=4, allowed_tokens=digits_then_newline, distinct=True)
    second = eng.expand([root], 3, stop=STOP, seed=4, allowed_tokens=digits_then_newline, distinct=True)
    steps = [tuple(t.tolist()) for t in first.tokens] + [tuple(t.tolist()) for t in second.tokens]
    assert len(steps) == len(set(steps))  # siblings are all different
    assert len(second.children) >= 1  # fresh random keys: the second call is not a replay of the first
    assert eng.num_sequences == 1 + len(steps)


def test_without_distinct_repeats_are_kept(model):
    eng = make_engine(model)
    (root,) = eng.prefill(PROMPTS[:1])
    exp = eng.expand([root], 3, stop=STOP, allowed_tokens=one_line)
    assert len(exp.children) == 3 and exp.discarded_tokens == {}
