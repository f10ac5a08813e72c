"""The ``ponder`` command line: one-line errors with exit status 2 for bad input, checks that run
before any long work, ``solve``'s verdicts, and ``--help`` / ``--version`` without torch."""

import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from ponder import __version__, cli
from ponder.tasks import countdown
from ponder.tasks.demo import SOLVER_MAX_NUMBERS, format_solution


@pytest.fixture
def paths(tmp_path):
    """{name: path} for the bad paths the commands must refuse."""
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory\n")
    junk = tmp_path / "junk_model"
    junk.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (junk / name).write_text("junk\n")
    (tmp_path / "empty").mkdir()
    return {"missing": str(tmp_path / "missing"), "file": str(a_file), "under_file": str(a_file / "out"),
            "empty": str(tmp_path / "empty"), "junk": str(junk)}


SOLVE = ["solve", "3", "4", "--target", "12"]
BAD_INPUT = [
    ("one_number", ["solve", "3", "--target", "5"], "solve takes 2 to 8 numbers, got 1: 3"),
    ("nine_numbers", ["solve"] + list("123456789") + ["--target", "50"], "solve takes 2 to 8 numbers, got 9"),
    ("number_zero", ["solve", "3", "0", "--target", "5"], "number must be an int >= 1, got 0"),
    ("number_negative", ["solve", "3", "-4", "--target", "5"], "number must be an int >= 1, got -4"),
    ("number_text", ["solve", "3", "x", "--target", "5"], "number must be an int >= 1, got 'x'"),
    ("target_text", ["solve", "3", "4", "--target", "abc"], "--target must be an int >= 1, got 'abc'"),
    ("target_is_a_number", ["solve", "3", "4", "--target", "4"], "target 4 is one of the numbers (3, 4)"),
    ("budget_zero", SOLVE + ["--budget", "0"], "--budget must be an int >= 1, got 0"),
    ("budget_float", SOLVE + ["--budget", "2.5"], "--budget must be an int >= 1, got '2.5'"),
    ("seed_negative", SOLVE + ["--seed", "-1"], "--seed must be an int >= 0, got -1"),
    ("algorithm", SOLVE + ["--algorithm", "dfs"], "invalid choice: 'dfs'"),
    ("no_target", ["solve", "3", "4"], "the following arguments are required: --target"),
    ("model_missing", SOLVE + ["--model", "{missing}"], "--model: no Countdown model in {missing}: no such directory"),
    ("model_file", SOLVE + ["--model", "{file}"], "a file, not a directory"),
    ("model_empty", SOLVE + ["--model", "{empty}"], "no model.safetensors in it"),
    ("model_junk", SOLVE + ["--model", "{junk}"], "--model: {junk} does not hold a Countdown model"),
    ("demo_numbers", ["demo", "--numbers", "7"], "--numbers must be an int from 3 to 6, got 7"),
    ("demo_problems", ["demo", "--problems", "0"], "--problems must be an int >= 1, got 0"),
    ("demo_seed", ["demo", "--seed", "-2"], "--seed must be an int >= 0, got -2"),
    ("demo_out_file", ["demo", "--out", "{file}"], "--out must be a directory, got the file"),
    ("demo_out_unwritable", ["demo", "--out", "{under_file}"], "--out must be a writable directory"),
    ("demo_model_missing", ["demo", "--out", "{empty}", "--model", "{missing}"], "--model: no Countdown model"),
    ("train_out_unwritable", ["train", "countdown", "--out", "{under_file}"], "--out must be a writable directory"),
    ("train_no_out", ["train", "countdown"], "the following arguments are required: --out"),
    ("train_steps", ["train", "countdown", "--out", "{empty}", "--steps", "0"], "--steps must be an int >= 1"),
    ("train_batch", ["train", "countdown", "--out", "{empty}", "--batch-size", "x"], "--batch-size must be an int"),
    ("train_seed", ["train", "countdown", "--out", "{empty}", "--seed", "-1"], "--seed must be an int >= 0, got -1"),
    ("train_task", ["train", "chess", "--out", "{empty}"], "invalid choice: 'chess'"),
    ("unknown_command", ["sovle"], "invalid choice: 'sovle'"),
    ("unknown_option", ["info", "--colour"], "unrecognized arguments: --colour"),
]


@pytest.mark.parametrize("argv, fragment", [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_gives_one_line_and_exit_status_2(argv, fragment, paths, capsys, monkeypatch):
    from ponder.tasks import demo, train

    def never(*args, **kwargs):
        raise AssertionError("the command started its work despite bad input")

    monkeypatch.setattr(train, "train_countdown", never)
    monkeypatch.setattr(demo, "run_demo", never)
    monkeypatch.setattr(demo, "solve_problem", never)
    with pytest.raises(SystemExit) as info:
        cli.main([a.format(**paths) for a in argv])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("ponder: error: ")
    assert fragment.format(**paths) in err
    assert "Traceback" not in err and "_Int" not in err and "invalid _" not in err


def test_train_countdown_checks_its_directory_before_training(paths, monkeypatch):
    from ponder.tasks import train

    monkeypatch.setattr(train, "_train", lambda *a: pytest.fail("training started"))
    with pytest.raises(ValueError, match="out_dir must be a writable directory"):
        train.train_countdown(paths["under_file"], quick=True, progress=False)
    with pytest.raises(ValueError, match="out_dir must be a directory, got the file"):
        train.train_countdown(paths["file"], quick=True, progress=False)


def test_writable_check_creates_the_directory(tmp_path):
    from ponder.tasks.paths import ensure_writable_dir

    out = tmp_path / "a" / "b"
    assert ensure_writable_dir(out, "--out") == str(out)
    assert out.is_dir() and os.listdir(out) == []  # the probe file is gone
    with pytest.raises(TypeError, match="--out must be a directory path, got int"):
        ensure_writable_dir(3, "--out")


def test_solve_says_when_no_solution_exists(capsys):
    code = cli.main(["solve", "2", "3", "--target", "7", "--algorithm", "greedy", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1
    assert "no solution exists for 2 3 -> 7 (any subset of the numbers)" in out
    assert "not solved" not in out and '"verified": false' in out


def test_solve_does_not_run_the_solver_on_many_numbers(capsys):
    # eight 1s reach at most 16: no policy can solve it, and the check is skipped above 6 numbers
    assert SOLVER_MAX_NUMBERS == 6
    code = cli.main(["solve"] + ["1"] * 8 + ["--target", "1000", "--algorithm", "greedy", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1
    assert "not solved: " in out and "not run on more than 6 numbers" in out


@pytest.mark.parametrize("solved, solvable, line", [
    (True, None, "answer: (25 * 7)"),
    (False, True, "not solved: the target 175 is never reached (last result 53) (a solution exists)"),
    (False, False, "no solution exists for 3 7 25 50 -> 175 (any subset of the numbers)"),
    (False, None, "not solved: the target 175 is never reached (last result 53) (the exact solver is not run"),
])
def test_format_solution_states_the_verdict(solved, solvable, line):
    problem = countdown.Problem((3, 7, 25, 50), 175)
    answer = "25 * 7 = 175\n" if solved else "50 + 3 = 53\n"
    stats = {"tokens_generated": 12, "expansions": 1, "model_calls": 3, "stop_reason": "exhausted"}
    out = {"problem": problem, "result": SimpleNamespace(answer=answer, stats=stats),
           "check": countdown.check(problem, answer), "solvable": solvable, "wall_s": 0.5}
    lines = format_solution(out).splitlines()
    assert lines[0] == "3 7 25 50 -> 175 any" and lines[1] == answer.strip()
    assert lines[2].startswith(line)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)


# Runs cli.py with a bare ``ponder`` package object in place of ponder/__init__.py, so only the
# imports of cli.py itself (and of ponder._version) count.
_BARE_PACKAGE = """
    import importlib.util, sys, types
    spec = importlib.util.find_spec("ponder")
    package = types.ModuleType("ponder")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["ponder"] = package
"""


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["solve", "--help"], ["demo", "--help"],
                                  ["train", "--help"], ["info", "--help"]])
def test_help_and_version_do_not_import_torch_in_cli(argv):
    proc = _run(_BARE_PACKAGE + f"""
    import ponder.cli
    try:
        ponder.cli.main({argv!r})
    except SystemExit as exit:
        assert exit.code == 0, exit.code
    heavy = sorted(m for m in ("torch", "numpy", "ponder.engine", "ponder.tasks") if m in sys.modules)
    assert not heavy, heavy
    """)
    assert proc.returncode == 0, proc.stderr
    assert "usage: ponder" in proc.stdout or proc.stdout == f"ponder {__version__}\n"


def test_ponder_version_without_torch_end_to_end():
    # the whole import path, ponder/__init__.py included, as `ponder --version` takes it
    proc = _run("""
    import sys
    import ponder.cli
    try:
        ponder.cli.main(["--version"])
    except SystemExit as exit:
        assert exit.code == 0, exit.code
    assert "torch" not in sys.modules, "ponder --version imported torch"
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"ponder {__version__}\n"


def test_version_in_process(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out == f"ponder {__version__}\n"
