"""Countdown rules, checker, solver and generator against literal cases and brute force."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ponder.tasks import countdown as cd
from ponder.tasks import solver

from oracle import brute_min_steps, oracle_ok


def problems(max_numbers=5):
    return st.builds(lambda seed, n, rule: cd.generate(1, seed, num_numbers=n, all_numbers=rule)[0],
                     st.integers(0, 10**6), st.integers(3, max_numbers), st.booleans())


# ---- Problem, prompt, steps ---------------------------------------------------------------


def test_prompt_round_trip_and_key():
    p = cd.Problem((3, 7, 25, 50), 175)
    assert p.prompt() == "3 7 25 50 -> 175 any\n"
    assert cd.Problem.from_prompt(p.prompt() + "25 * 7 = 175\n") == p
    q = cd.Problem([50, 25, 7, 3], 175)
    assert q.numbers == (50, 25, 7, 3) and q.key() == p.key()
    assert cd.Problem((1, 2, 3, 4), 24, all_numbers=True).prompt() == "1 2 3 4 -> 24 all\n"
    for bad in ("3 7 -> 10", "numbers: 3 7 | target: 10 | rule: any", "3 7 -> 10 some"):
        with pytest.raises(ValueError, match="does not start with a prompt"):
            cd.Problem.from_prompt(bad)


@pytest.mark.parametrize("args, exc, match", [
    (((3,), 5), ValueError, "2 to 8"),
    (((3, 0), 5), ValueError, "positive ints"),
    (((3, True), 5), ValueError, "positive ints"),
    (((3, 4), 0), ValueError, "target must be a positive int"),
    (((3, 4), 4), ValueError, "target 4 is one of the numbers"),
    (((3, 4), 7, 1), TypeError, "all_numbers must be a bool"),
    (("34", 7), TypeError, "numbers must be a tuple"),
])
def test_problem_rejects_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        cd.Problem(*args)


def test_all_numbers_rule_may_have_the_target_among_the_numbers():
    p = cd.Problem((24, 1), 24, all_numbers=True)
    assert cd.check(p, "24 * 1 = 24").ok


def test_parse_step():
    assert cd.parse_step("25 * 7 = 175") == cd.Step(25, "*", 7, 175)
    assert cd.parse_step(" 3+4=7 ") == cd.Step(3, "+", 4, 7)
    assert str(cd.parse_step("8/2=4")) == "8 / 2 = 4"
    for bad in ("25 x 7 = 175", "25 * 7", "= 3", "-3 + 4 = 1", "03 + 4 = 7", "3 + 4 = 7 = 7", ""):
        with pytest.raises(ValueError, match="malformed step"):
            cd.parse_step(bad)
    with pytest.raises(TypeError, match="line must be a str"):
        cd.parse_step(7)


def test_remaining_and_terminal():
    p = cd.Problem((3, 7, 25, 50), 175)
    assert cd.remaining(p, []) == (3, 7, 25, 50)
    assert cd.remaining(p, ["50 - 25 = 25"]) == (3, 7, 25)
    assert not cd.is_terminal(p, ["50 - 25 = 25"])
    assert cd.is_terminal(p, ["50 - 25 = 25", "25 * 7 = 175"])
    assert cd.is_terminal(p, ["50 - 25 = 24"])  # illegal line ends the trajectory
    with pytest.raises(ValueError, match=r"steps\[1\].*not available"):
        cd.remaining(p, ["50 - 25 = 25", "50 + 3 = 53"])
    q = cd.Problem((1, 2, 3), 6, all_numbers=True)
    assert not cd.is_terminal(q, ["2 * 3 = 6"])  # the 1 is still unused
    assert cd.is_terminal(q, ["2 * 3 = 6", "6 * 1 = 6"])
    assert cd.is_solved(q, ["2 * 3 = 6", "6 * 1 = 6"]) and not cd.is_solved(q, ["2 * 3 = 6"])
    assert cd.is_solved(q, [cd.Step(2, "*", 3, 6), "6 / 1 = 6"])
    assert not cd.is_solved(q, ["2 * 3 = 6", "6 * 1 = 7"]) and not cd.is_solved(q, ["2 times 3"])
    assert not cd.is_solved(q, [])
    with pytest.raises(TypeError, match="a step must be"):
        cd.is_solved(q, [6])


# ---- checker ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, reason", [
    ("", "no step lines"),
    ("25 * 7 = 176", "wrong arithmetic, 25 \\* 7 is 175"),
    ("25 - 50 = 25", "negative"),
    ("25 - 25 = 0", "zero|not available"),
    ("50 / 3 = 16", "not an integer"),
    ("25 * 8 = 200", "8 is not available"),
    ("7 + 3 = 10\n10 + 3 = 13", "3 is not available"),
    ("25 * 7 = 175\n3 + 50 = 53", "after the target was reached"),
    ("50 + 25 = 75", "never reached"),
    ("25 times 7", "line 1: malformed"),
    ("25 * 7 = 175\nanswer: (25 * 8)", "8.*more often"),
    ("25 * 7 = 175\nanswer: (25 + 7)", "evaluates to 32"),
    ("25 * 7 = 175\nanswer: (25 * 7", "missing"),
])
def test_check_rejects_with_reason(text, reason):
    p = cd.Problem((3, 7, 25, 50), 175)
    result = cd.check(p, text)
    assert not result.ok and result.answer_expr is None
    assert re.search(reason, result.reason), result.reason


def test_check_accepts_and_builds_the_answer():
    p = cd.Problem((3, 7, 25, 50), 175)
    r = cd.check(p, p.prompt() + "50 - 25 = 25\n25 * 7 = 175\nanswer: ((50 - 25) * 7)\n\n")
    assert r.ok and r.reason == "solved" and len(r.steps) == 2
    assert r.answer_expr == "((50 - 25) * 7)"
    # any answer expression that evaluates correctly is accepted, not only the built one
    assert cd.check(p, "50 - 25 = 25\n25 * 7 = 175\nanswer: 7 * 25").ok
    q = cd.Problem((1, 3, 4, 6), 24, all_numbers=True)
    r = cd.check(q, "3 / 1 = 3\n4 - 3 = 1\n6 / 1 = 6")
    assert not r.ok and "the last result 6 is not the target" in r.reason
    r = cd.check(q, "6 / 3 = 2\n4 - 1 = 3\n3 * 2 = 6")
    assert not r.ok and "not the target" in r.reason
    r = cd.check(q, "6 * 4 = 24")
    assert not r.ok and "unused: 1 3 24" in r.reason
    assert cd.check(q, "6 * 4 = 24\n3 - 1 = 2\n24 / 2 = 12") .reason.startswith("the last result 12")


def test_answer_expression_prefers_the_latest_result():
    p = cd.Problem((2, 3, 5), 25, all_numbers=True)
    steps = ["3 + 2 = 5", "5 * 5 = 25"]
    assert cd.answer_expression(p, steps) == "((3 + 2) * 5)"
    with pytest.raises(ValueError, match="do not solve"):
        cd.answer_expression(p, steps[:1])
    assert cd.check_expression(p, "(3 + 2) * 5") is None
    assert "more often than the numbers allow" in cd.check_expression(p, "5 * 5")
    assert "does not use every number" in cd.check_expression(cd.Problem((1, 2, 3, 5), 25, True), "(3 + 2) * 5")
    assert "not a positive integer" in cd.check_expression(p, "(2 - 3 + 5) * 5 * 5 / 5")


@settings(max_examples=60)
@given(problems())
def test_checker_accepts_every_solver_solution(problem):
    for lines in cd.solutions(problem, limit=6, seed=1):
        text = "\n".join(lines)
        result = cd.check(problem, text)
        assert result.ok, (problem, lines, result.reason)
        assert oracle_ok(problem, text)
        assert cd.check_expression(problem, result.answer_expr) is None
        assert cd.check(problem, text + f"\nanswer: {result.answer_expr}").ok


@settings(max_examples=150)
@given(problems(), st.data())
def test_checker_agrees_with_oracle_on_mutated_solutions(problem, data):
    lines = cd.solve(problem)
    steps = [cd.parse_step(ln) for ln in lines]
    k = data.draw(st.integers(0, len(steps) - 1), label="step")
    field = data.draw(st.sampled_from(["a", "op", "b", "result"]), label="field")
    s = steps[k]
    if field == "op":
        value = data.draw(st.sampled_from([o for o in cd.OPS if o != s.op]))
    else:
        old = getattr(s, field)
        value = data.draw(st.integers(1, 2 * old + 10).filter(lambda v: v != old))
    mutated = list(lines)
    mutated[k] = str(cd.Step(**{**s.__dict__, field: value}))
    text = "\n".join(mutated)
    result = cd.check(problem, text)
    assert result.ok == oracle_ok(problem, text), (problem, text, result.reason)
    if field == "result":
        assert not result.ok and "wrong arithmetic" in result.reason


@settings(max_examples=60)
@given(problems())
def test_checker_rejects_reusing_a_number(problem):
    lines = cd.solve(problem)
    first = cd.parse_step(lines[0])
    # Reuse an operand of the first step in a second step while it is no longer available.
    pool = cd.remaining(problem, lines[:1])
    assume(first.a not in pool and problem.target not in pool)
    other = max(pool)
    reuse = f"{max(first.a, other)} + {min(first.a, other)} = {first.a + other}"
    result = cd.check(problem, "\n".join([lines[0], reuse]))
    assert not result.ok and f"{first.a} is not available" in result.reason


# ---- solver -------------------------------------------------------------------------------


@settings(max_examples=120)
@given(st.lists(st.integers(1, 12), min_size=2, max_size=4), st.integers(1, 60), st.booleans())
def test_solver_matches_brute_force(numbers, target, all_numbers):
    if not all_numbers and target in numbers:
        return
    problem = cd.Problem(tuple(numbers), target, all_numbers)
    best = brute_min_steps(numbers, target, all_numbers)
    assert cd.is_solvable(problem) == (best is not None)
    solution = cd.solve(problem)
    if best is None:
        assert solution is None and cd.all_solutions(problem) == [] and cd.solutions(problem, 3) == []
    else:
        assert len(solution) == best and cd.check(problem, "\n".join(solution)).ok


@settings(max_examples=25)
@given(st.lists(st.integers(1, 15), min_size=5, max_size=5), st.integers(1, 150), st.booleans())
def test_search_and_value_sets_agree_on_five_numbers(numbers, target, all_numbers):
    # Up to 4 numbers the solver reads value sets (checked against brute force above); from 5
    # on it searches. Both must agree on the same 5-number states.
    state = tuple(sorted(numbers))
    values = solver.full_values(state) if all_numbers else solver.reach_values(state)
    assert solver.solvable(state, target, all_numbers) == (target in values)


def test_shortest_solution_needing_every_number():
    p = cd.Problem((1, 1, 1, 1, 1), 5)
    assert brute_min_steps(p.numbers, 5, False) == 4
    assert len(cd.solve(p)) == 4 and cd.check(p, "\n".join(cd.solve(p))).ok
    assert len(cd.solve(cd.Problem((1, 1, 1, 1, 1), 6))) == 4  # (1 + 1 + 1) * (1 + 1)
    assert cd.solve(cd.Problem((1, 1, 1, 1, 1), 7)) is None


def test_all_solutions_literal():
    # 2 * 3 + 4 and 4 * 3 - 2; "4 + 2 = 6" leads nowhere and "6 + 4" needs the 4 twice
    assert cd.all_solutions(cd.Problem((2, 3, 4), 10)) == [["3 * 2 = 6", "6 + 4 = 10"], ["4 * 3 = 12", "12 - 2 = 10"]]
    assert cd.all_solutions(cd.Problem((2, 3, 4), 10, all_numbers=True)) == [
        ["3 * 2 = 6", "6 + 4 = 10"], ["4 * 3 = 12", "12 - 2 = 10"]]
    assert cd.all_solutions(cd.Problem((2, 3, 4), 23)) == []


def test_solutions_vary_orders_and_trees():
    p = cd.Problem((1, 2, 3, 4), 24, all_numbers=True)
    everything = cd.all_solutions(p)
    drawn = cd.solutions(p, limit=12, seed=3)
    assert len(drawn) == 12 and len({tuple(s) for s in drawn}) == 12
    assert all(s in everything for s in drawn)
    # one tree, (4 * 3) * (2 * 1), in both orders of its independent steps
    assert ["4 * 3 = 12", "2 * 1 = 2", "12 * 2 = 24"] in everything
    assert ["2 * 1 = 2", "4 * 3 = 12", "12 * 2 = 24"] in everything
    assert cd.solutions(p, limit=12, seed=3) == drawn


def test_classic_solutions_have_no_wasted_steps():
    p = cd.Problem((1, 2, 3, 100), 6)
    for s in cd.all_solutions(p):
        assert not any(ln.startswith("100") or " 100 " in ln for ln in s), s
    assert cd.solve(p) == ["3 * 2 = 6"]


def test_is_solvable_on_partial_states():
    p = cd.Problem((3, 7, 25, 50), 175)
    assert cd.is_solvable(p, (25, 7)) and cd.is_solvable(p, (175, 3))
    assert not cd.is_solvable(p, (3, 7))
    q = cd.Problem((3, 7, 25, 50), 175, all_numbers=True)
    assert cd.is_solvable(q, (175,)) and not cd.is_solvable(q, (175, 3))
    with pytest.raises(ValueError, match="non-empty multiset of positive ints"):
        cd.is_solvable(p, ())
    with pytest.raises(TypeError, match="iterable of ints"):
        cd.is_solvable(p, 5)


# ---- generator ----------------------------------------------------------------------------


def test_generate_is_deterministic_and_respects_knobs():
    a = cd.generate(50, seed=7, num_numbers=(3, 5), min_value=2, max_value=9, min_target=20, max_target=40)
    assert a == cd.generate(50, seed=7, num_numbers=(3, 5), min_value=2, max_value=9, min_target=20, max_target=40)
    assert a != cd.generate(50, seed=8, num_numbers=(3, 5), min_value=2, max_value=9, min_target=20, max_target=40)
    for p in a:
        assert 3 <= len(p.numbers) <= 5 and all(2 <= x <= 9 for x in p.numbers)
        assert 20 <= p.target <= 40 and cd.is_solvable(p) and not p.all_numbers
    assert {len(p.numbers) for p in a} == {3, 4, 5}
    b = cd.generate(30, seed=1, all_numbers=True, solvable_only=False)
    assert all(p.all_numbers for p in b) and not all(cd.is_solvable(p) for p in b)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=-1), "n must be"),
    (dict(num_numbers=1), "num_numbers"),
    (dict(num_numbers=(5, 3)), "num_numbers"),
    (dict(min_value=0), "min_value"),
    (dict(min_target=50, max_target=10), "min_target"),
])
def test_generate_rejects_bad_knobs(kwargs, match):
    args = {"n": 3, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        cd.generate(**args)


def test_generate_reports_impossible_knobs_instead_of_hanging():
    with pytest.raises(ValueError, match="admit too few solvable"):
        cd.generate(2, seed=0, num_numbers=2, min_value=1, max_value=1, min_target=50, max_target=60)


def test_legal_steps_literal():
    p = cd.Problem((2, 3, 6), 12)
    assert sorted(cd.legal_steps(p, [])) == sorted([
        "3 + 2 = 5", "3 * 2 = 6", "3 - 2 = 1",
        "6 + 2 = 8", "6 * 2 = 12", "6 - 2 = 4", "6 / 2 = 3",
        "6 + 3 = 9", "6 * 3 = 18", "6 - 3 = 3", "6 / 3 = 2"])
    assert sorted(cd.legal_steps(p, ["6 / 3 = 2"])) == ["2 * 2 = 4", "2 + 2 = 4", "2 / 2 = 1"]  # 2 - 2 = 0 is refused
    assert cd.legal_steps(p, ["6 * 2 = 12"]) == []  # solved: nothing may follow
    assert cd.legal_steps(p, ["6 * 2 = 13"]) == []  # an illegal line ends the path
    assert cd.legal_steps(p, ["6 / 3 = 2", "2 * 2 = 4", "4 + 3 = 7"]) == []  # one number left


@settings(max_examples=60, deadline=None)
@given(problems(), st.data())
def test_legal_steps_are_exactly_the_checker_legal_lines(problem, data):
    """Every listed line passes the checker's step rules; every legal larger-first line is listed."""
    state = cd.remaining(problem, [])
    lines: list = []
    while not cd.is_terminal(problem, lines):
        legal = cd.legal_steps(problem, lines)
        assert len(legal) == len(set(legal))
        for ln in legal:
            cd.remaining(problem, lines + [ln])  # raises if illegal
        nums = sorted(set(state))
        brute = set()
        for a in nums:
            for b in nums:
                if a < b or (a == b and state.count(a) < 2):
                    continue
                for op in cd.OPS:
                    c = cd.apply_op(a, op, b)
                    if c is not None:
                        brute.add(f"{a} {op} {b} = {c}")
        assert set(legal) == brute
        lines.append(data.draw(st.sampled_from(legal)))
        state = cd.remaining(problem, lines)
