"""The demo / solve pipeline end to end on a toy model trained in the test (seconds), plus the
Countdown verifier the searches use. (The shipped model's accuracy is measured by ``ponder demo``
itself, not asserted here.)"""

import os

import pytest

from ponder import cli
from ponder.tasks import countdown
import ponder
from ponder.tasks.demo import (STEP_STOP, format_solution, held_out_problems, legal_step_constraint,
                               legal_token_constraint, load_model, run_demo, solve, strategies, verifier)
from ponder.tasks.train import train_countdown


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_countdown")
    train_countdown(out, quick=True, progress=False, evaluate=False)
    return str(out)


def test_verifier_judges_only_finished_paths():
    p = countdown.Problem((3, 7, 25, 50), 175)
    judge = verifier([p]).check
    assert judge(0, "") is None
    assert judge(0, "7 + 3 = 10\n") is None  # legal, not finished: the search goes on
    assert judge(0, "25 * 7 = 175\n") == 1.0
    assert judge(0, "25 * 7 = 170\n") == 0.0  # wrong arithmetic ends the path as a failure
    assert judge(0, "25 * 7 = 1") == 0.0  # a step cut off without its newline is judged as it is


def test_legal_step_constraint_lists_the_legal_continuations():
    steps = legal_step_constraint([countdown.Problem((2, 3, 6), 12)]).steps
    assert sorted(steps(0, "")) == ["3 * 2 = 6\n", "3 + 2 = 5\n", "3 - 2 = 1\n", "6 * 2 = 12\n", "6 * 3 = 18\n",
                                    "6 + 2 = 8\n", "6 + 3 = 9\n", "6 - 2 = 4\n", "6 - 3 = 3\n", "6 / 2 = 3\n",
                                    "6 / 3 = 2\n"]
    assert steps(0, "6 / 3 = ") == ["2\n"]  # a partial line: only its legal endings
    assert steps(0, "6 * 2 = 12\n") is None  # solved: the verifier ends the path
    assert steps(0, "6 * 2 = 13\n") is None  # an illegal line earlier on the path
    assert steps(0, "6 x") is None  # off the grammar: no restriction, the checker rejects the line


def test_native_and_per_token_constraints_search_the_same_trees(toy_dir):
    model, tok = load_model(toy_dir)
    problems = held_out_problems(4, 4, False, toy_dir)
    trees = []
    for constraint in (legal_step_constraint(problems), legal_token_constraint(problems, tok)):
        eng = ponder.Engine(model, tok, num_pages=1024, page_size=16)
        results = ponder.search([p.prompt() for p in problems], eng, algorithm="mcts", num_children=4,
                                budget=ponder.Budget(max_expansions=6), sampling=ponder.SamplingParams(temperature=2.0),
                                progress=False, stop=STEP_STOP, verifier=verifier(problems), constraint=constraint)
        trees.append([(r.nodes["tokens"], r.nodes["prior"], r.answer) for r in results])
    assert trees[0] == trees[1]
    assert sum(len(t[0]) for t in trees[0]) > 4 * 6  # the searches did grow trees


def test_legal_token_constraint_allows_exactly_the_legal_continuations(toy_dir):
    _, tok = load_model(toy_dir)
    allowed = legal_token_constraint([countdown.Problem((2, 3, 6), 12)], tok)

    def chars(text):
        ids = allowed(0, text)
        return None if ids is None else "".join(sorted(tok.decode([i]) for i in ids))

    assert chars("") == "36"  # larger-first: a line starts with 3 or 6
    assert chars("6 ") == "*+-/"
    assert chars("6 / 3 = ") == "2"
    assert chars("6 / 3 = 2") == "\n"
    assert chars("6 / 3 = 2\n2 ") == "*+/"  # 2 - 2 = 0 is refused
    assert chars("3 + 2 = ") == "5"
    assert chars("6 * 2 = 12\n") is None  # solved: the verifier ends the path
    assert chars("6 * 2 = 13\n") is None  # an illegal line earlier on the path
    assert chars("6 x") is None  # off the grammar: no restriction, the checker rejects the line


def test_constrained_search_writes_only_legal_lines(toy_dir):
    model, tok = load_model(toy_dir)
    problems = held_out_problems(3, 4, False, toy_dir)
    eng = ponder.Engine(model, tok, num_pages=1024, page_size=16)
    results = ponder.search([p.prompt() for p in problems], eng, algorithm="best_of_n", n=6, max_steps=4,
                            sampling=ponder.SamplingParams(temperature=2.0), progress=False, stop=STEP_STOP,
                            verifier=verifier(problems), constraint=legal_step_constraint(problems, tok))
    assert len(results) == 3
    steps = 0
    for problem, r in zip(problems, results):
        for node in range(1, len(r.nodes["parent"])):
            path, n = [], node
            while n > 0:
                path.append(r.nodes["text"][n])
                n = r.nodes["parent"][n]
            lines = [ln for ln in "".join(reversed(path)).split("\n") if ln]
            countdown.remaining(problem, lines)  # raises on any illegal line
            steps += 1
    assert steps >= 3 * 4  # the search did sample (temperature 2 on a toy model)


def test_run_demo_writes_table_tree_and_checks_answers(toy_dir, tmp_path, capsys):
    rows = run_demo(num_problems=2, quick=True, out_dir=str(tmp_path), progress=False, model_dir=toy_dir)
    assert [(r["strategy"], r["budget"]) for r in rows] == [(s.name, s.label) for s in strategies(quick=True)]
    problems = held_out_problems(2, 4, False, toy_dir)
    for r in rows:
        # "solved" is recomputed by the checker from the returned answers, never taken from the search
        expected = sum(countdown.check(p, res.answer).ok for p, res in zip(problems, r["results"])) / 2
        assert r["solved"] == expected
        assert r["tokens_per_problem"] > 0
    out = capsys.readouterr().out
    assert "strategy" in out and "mcts" in out and "greedy" in out
    assert os.path.getsize(tmp_path / "ponder-demo-tree.dot") > 0
    assert (tmp_path / "ponder-demo-tree.json").read_text().startswith("{")
    assert (tmp_path / "ponder-demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # matplotlib: test extra


def test_demo_table_prints_without_matplotlib(toy_dir, tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("no matplotlib here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    run_demo(num_problems=1, quick=True, out_dir=str(tmp_path), progress=False, model_dir=toy_dir)
    out = capsys.readouterr().out
    assert "strategy" in out and "matplotlib is not installed" in out
    assert not (tmp_path / "ponder-demo.png").exists()


def test_solve_and_cli(toy_dir, capsys):
    out = solve([3, 7, 25, 50], 175, algorithm="best_of_n", budget=2, model_dir=toy_dir, progress=False)
    text = format_solution(out)
    assert text.splitlines()[0] == countdown.Problem((3, 7, 25, 50), 175).prompt().rstrip()
    assert ("answer: (" in text) == out["check"].ok
    code = cli.main(["solve", "3", "7", "25", "50", "--target", "175", "--algorithm", "greedy",
                     "--model", toy_dir, "--no-progress"])
    assert code in (0, 1)  # 1 = not solved by the toy model; the output says why
    assert "tokens_generated" in capsys.readouterr().out


def test_missing_model_and_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="ponder train countdown"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="algorithm must be"):
        solve([1, 2], 3, algorithm="dfs", model_dir=tmp_path / "missing")
    with pytest.raises(SystemExit):
        cli.main(["solve", "3", "0", "--target", "5"])  # numbers must be >= 1
