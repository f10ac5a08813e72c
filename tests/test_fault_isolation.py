"""Hard budgets and per-problem fault isolation: a search with any budget ends, and a callback
that fails for one problem fails that problem only (its KV freed), never the batch."""

import re

import numpy as np
import pytest

import ponder
from fake_policy import FakePolicy
from ponder import Budget, StepStop, Verifier
from test_engine import ALPHABET, PROMPTS, CharTokenizer, tiny_model

STOP = StepStop(strings=("\n",), max_step_tokens=8)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def engine(model, num_pages=512):
    return ponder.Engine(model, CharTokenizer(), num_pages=num_pages, page_size=4)


@pytest.mark.parametrize("budget,reason", [(Budget(max_expansions=5), "max_expansions"),
                                           (Budget(max_tokens=7), "max_tokens")])
def test_rounds_that_expand_nothing_still_end_the_search(budget, reason):
    """c_puct=0 and a verifier that accepts the first answer: every later round selects the same
    terminal leaf and expands nothing. Those rounds are charged, so the budget still ends it."""
    fake = FakePolicy(by_index=(0.2, 0.8), max_depth=5)
    accept = Verifier(lambda i, text: True if text == "2" else None)  # the root's second child
    [r] = ponder.mcts(["1"], fake, budget=budget, c_puct=0.0, num_children=2, verifier=accept, progress=False)
    assert r.stop_reason == reason
    assert r.stats["expansions"] == 1 and r.verified and r.answer == "2"
    assert r.stats["iterations"] <= 7  # the first expansion, then one charged empty round each


def test_a_huge_child_count_is_refused_before_anything_is_allocated(model):
    eng = engine(model)
    roots = eng.prefill(PROMPTS[:1])
    with pytest.raises(ValueError, match="asks for 1000000000000 children"):
        eng.expand(roots, 10**12, stop=STOP)
    with pytest.raises(ValueError, match=r"num_children must be an int in \[1, 65536\]"):
        ponder.mcts(PROMPTS[:1], eng, budget=Budget(max_expansions=1), num_children=10**12, progress=False)
    assert eng.num_sequences == 1


def failing_on(problem, what="boom"):
    def check(i, text):
        if i == problem:
            raise RuntimeError(what)
        return None if len(text) < 6 else text.count("a") > 0
    return Verifier(check)


@pytest.mark.parametrize("algorithm,opts", [("mcts", dict(budget=Budget(max_expansions=4), num_children=2)),
                                            ("beam_search", dict(width=2, expansion=2, max_steps=3)),
                                            ("best_of_n", dict(n=3, max_steps=3))])
def test_a_failing_verifier_fails_its_problem_only(model, algorithm, opts):
    eng = engine(model)
    results = ponder.search(PROMPTS, eng, algorithm=algorithm, stop=STOP, verifier=failing_on(1), progress=False,
                            **opts)
    eng_alone = engine(model)
    alone = ponder.search([PROMPTS[0], PROMPTS[2]], eng_alone, algorithm=algorithm, stop=STOP,
                          verifier=failing_on(-1), progress=False, **opts)
    bad = results[1]
    assert bad.stop_reason == "error" and "verifier failed for problem 1" in bad.error and "boom" in bad.error
    assert bad.error is not None and results[0].error is None and results[2].error is None
    # the healthy problems are searched exactly as they would be without the failing one
    for r, a in zip((results[0], results[2]), alone):
        assert r.answer_tokens == a.answer_tokens and r.stop_reason == a.stop_reason
        assert r.nodes["tokens"] == a.nodes["tokens"]
    # the failed problem keeps no KV (the pool holds what the healthy ones alone hold); its
    # result is a valid, exportable tree
    assert eng.page_table.stats()["used"] == eng_alone.page_table.stats()["used"]
    assert ponder.SearchResult.from_json(bad.to_json()).error == bad.error
    bad.release()
    results[0].release()
    results[2].release()
    assert eng.page_table.stats()["used"] == 0


def test_on_error_raise_fails_fast(model):
    with pytest.raises(RuntimeError, match="boom"):
        ponder.search(PROMPTS, engine(model), algorithm="best_of_n", n=2, max_steps=2, stop=STOP,
                      verifier=failing_on(1), on_error="raise", progress=False)
    with pytest.raises(ValueError, match="on_error must be one of"):
        ponder.search(PROMPTS, engine(model), algorithm="best_of_n", on_error="ignore", progress=False)


class PickyScorer:
    """The value head's scores, except garbage (or an exception) for problem 1's children."""

    def __init__(self, mode, victim_prompt):
        self.mode, self.victim = mode, CharTokenizer().encode(victim_prompt)

    def score(self, policy, exp):
        scores = ponder.ValueHead().score(policy, exp)
        mine = np.array([policy.tokens(int(p))[:len(self.victim)].tolist() == self.victim for p in exp.parents])
        if mine.any():
            if self.mode == "raise":
                raise KeyError("no score for this one")
            scores[mine] = {"nan": np.nan, "range": 1.5}[self.mode]
        return scores


@pytest.mark.parametrize("mode,match", [("raise", "no score for this one"), ("nan", "finite and in"),
                                        ("range", "finite and in")])
def test_a_scorer_failing_for_one_problem_fails_that_problem(model, mode, match):
    eng = engine(model)
    results = ponder.search(PROMPTS, eng, scorer=PickyScorer(mode, PROMPTS[1]), algorithm="beam_search", width=2,
                            expansion=2, max_steps=2, stop=STOP, progress=False)
    assert [r.stop_reason == "error" for r in results] == [False, True, False]
    assert match in results[1].error and "scorer PickyScorer" in results[1].error
    assert all(len(r.nodes["parent"]) > 1 for r in (results[0], results[2]))


def test_a_scorer_of_the_wrong_shape_is_refused(model):
    class Column:
        def score(self, policy, exp):
            return ponder.ValueHead().score(policy, exp)[:, None]

    shape = r"shape \(\d+, 1\); expected \(\d+,\), one per child"
    with pytest.raises(ValueError, match=shape):
        ponder.search(PROMPTS[:1], engine(model), scorer=Column(), algorithm="best_of_n", n=2, max_steps=1,
                      stop=STOP, progress=False, on_error="raise")
    # isolated, every problem it scored fails with that message
    results = ponder.search(PROMPTS[:2], engine(model), scorer=Column(), algorithm="best_of_n", n=2, max_steps=1,
                            stop=STOP, progress=False)
    assert all(r.stop_reason == "error" and re.search(shape, r.error) for r in results)


@pytest.mark.parametrize("answer,match", [(RuntimeError("no grammar"), "no grammar"),
                                          ([1.5, 2.0], "expected a 1-D list of token ids"),
                                          ("abc", "expected token ids")])
def test_a_failing_constraint_fails_its_problem_only(model, answer, match):
    digits = [ALPHABET.index(c) for c in "0123456789\n"]

    def constraint(i, text):
        if i == 2:
            if isinstance(answer, Exception):
                raise answer
            return answer
        return digits

    eng = engine(model)
    results = ponder.search(PROMPTS, eng, algorithm="best_of_n", n=2, max_steps=2, stop=STOP, constraint=constraint,
                            progress=False)
    assert [r.stop_reason == "error" for r in results] == [False, False, True]
    assert "constraint failed for problem 2" in results[2].error and match in results[2].error
    for r in results[:2]:
        assert set("".join(r.nodes["text"][1:])) <= set("0123456789\n")


def test_fail_fast_leaves_no_sequence_behind(model):
    eng = engine(model)
    with pytest.raises(RuntimeError, match="boom"):
        ponder.search(PROMPTS, eng, algorithm="mcts", budget=Budget(max_expansions=3), num_children=2, stop=STOP,
                      verifier=failing_on(1), on_error="raise", progress=False)
    # only the prompts (and the children of rounds that completed) remain: the failed round's
    # children were freed; nothing is left once the roots go too
    live = eng.handles()
    assert len(live) == 3  # the verifier fails in the first round: only the three prompts remain
    eng.free(live)
    assert eng.page_table.stats()["used"] == 0
