"""Shared batch budget (ponder.search.adaptive) against the same budget split evenly, on the
deterministic fake policy: easy problems (answer one step deep), hard ones (three steps deep, off
the path the fake value prefers) and hopeless ones (an answer the fake never writes)."""

import pytest

import ponder
from fake_policy import FakePolicy
from ponder import Budget, Verifier
from ponder.search.adaptive import AdaptiveRun, SharedBudget, adaptive_search, tokens_to_reach

# Child j of a node writes the digit j + 1; the fake value prefers digit 2 (0.8 against 0.2).
SECRETS = ["2", "12", "111", "2", "121", "999", "2", "112", "22", "999"]
PROMPTS = [[i % 10] for i in range(len(SECRETS))]
OPTIONS = dict(num_children=2, refill=True)


def verifier():
    def judge(index, text):
        secret = SECRETS[index]
        return None if len(text) < len(secret) else float(text == secret)

    return Verifier(judge)


def even_split(share):
    results = ponder.search(PROMPTS, FakePolicy(), "value", "mcts", Budget(max_tokens=share, stop_on_verified=True),
                            verifier=verifier(), progress=False, **OPTIONS)
    return sum(r.verified for r in results), sum(r.stats["tokens_generated"] for r in results)


# focus=1 (the default): every open problem gets each round. The fake value prefers the wrong
# digit on purpose, so it cannot rank the problems; the gain measured here is the even split's
# unspent shares moving to the open problems.
def shared(total, **kw) -> AdaptiveRun:
    return adaptive_search(PROMPTS, FakePolicy(), "value", "mcts", SharedBudget(max_tokens=total, **kw),
                           verifier=verifier(), **OPTIONS)


@pytest.mark.parametrize("share", [6, 8])
def test_shared_budget_solves_more_than_the_even_split_of_the_same_total(share):
    solved_even, _ = even_split(share)
    run = shared(share * len(SECRETS), min_expansions=2)
    solved = sum(r.verified for r in run.results)
    assert solved > solved_even
    # the shared total holds up to the last round's overshoot: at most one round (2 tokens) per problem
    assert run.tokens <= share * len(SECRETS) + 2 * len(SECRETS)
    assert all(r.verified for r, s in zip(run.results, SECRETS) if s == "2")  # the easy ones still solved


def test_shared_budget_needs_fewer_tokens_for_the_even_split_accuracy():
    solved_even, spent_even = even_split(12)
    run = shared(12 * len(SECRETS), min_expansions=2)
    needed = tokens_to_reach(run.trajectory, solved_even)
    assert needed is not None and needed < spent_even


def test_a_smaller_shared_budget_is_a_prefix_of_a_larger_one():
    small, large = shared(40), shared(120)
    # every scheduling round of the small run, bar its budget-fitted last one, matches the large run's
    assert small.trajectory[:-1] == large.trajectory[:len(small.trajectory) - 1]
    assert tokens_to_reach(large.trajectory, 10**6) is None


def test_verified_problems_stop_and_leave_their_budget_to_the_open_ones():
    run = shared(200, min_expansions=2)
    reasons = [r.stop_reason for r in run.results]
    assert [reasons[i] for i, s in enumerate(SECRETS) if s == "2"] == ["verified"] * 3
    easy_tokens = [r.stats["tokens_generated"] for r, s in zip(run.results, SECRETS) if s == "2"]
    hopeless_tokens = [r.stats["tokens_generated"] for r, s in zip(run.results, SECRETS) if s == "999"]
    assert max(easy_tokens) <= 2  # one expansion of two one-token children
    assert min(hopeless_tokens) > max(easy_tokens)  # the rest of the budget went to the open problems


def test_focus_gives_each_round_to_fewer_problems():
    full, half = shared(120, min_expansions=2), shared(120, min_expansions=2, focus=0.5)
    # the same total spread over more scheduling rounds, each with fewer problems in it
    assert len(half.trajectory) > len(full.trajectory)
    assert half.tokens <= 120 + 2 * len(SECRETS)


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_tokens=10, focus=0.0), "focus"),
    (dict(), "max_tokens or max_expansions"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=10, converge_patience=0), "converge_patience"),
    (dict(max_tokens=10, per_problem=5), "per_problem"),
])
def test_shared_budget_rejects_bad_settings(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SharedBudget(**kwargs)


def test_adaptive_search_names_an_unknown_option():
    with pytest.raises(TypeError, match="unknown option"):
        adaptive_search(PROMPTS, FakePolicy(), budget=SharedBudget(max_tokens=10), width=2)


def test_adaptive_search_names_a_wrong_budget():
    with pytest.raises(TypeError, match="budget must be a ponder.SharedBudget"):
        adaptive_search(PROMPTS, FakePolicy(), budget=Budget(max_tokens=10))
