"""The Countdown model shipped in the package: it loads, solves easy problems by MCTS, and
``ponder demo --quick`` runs on it in seconds."""

import json

import pytest

from ponder import cli
from ponder.tasks import countdown
from ponder.tasks.demo import ASSET_DIR, held_out_problems, load_model, mcts_strategy, run_strategy


def test_bundled_model_loads_with_its_record():
    model, tok = load_model()
    assert model.value_head is not None
    with open(ASSET_DIR / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert model.config.hidden_size == metrics["config"]["hidden_size"]
    assert tok.encode("3 7 -> 21 any\n")  # the shipped tokenizer covers the prompt alphabet
    assert (ASSET_DIR / "README.md").is_file()  # the model card


@pytest.mark.parametrize("all_numbers", [False, True])
def test_bundled_model_solves_easy_problems_by_mcts(all_numbers):
    model, tok = load_model()
    # three numbers: a few dozen legal paths, which 32 expansions cover many times over
    problems = held_out_problems(6, 3, all_numbers)
    out = run_strategy(model, tok, problems, mcts_strategy(32))
    for p, r in zip(problems, out["results"]):
        assert countdown.check(p, r.answer).ok, (p.prompt(), r.answer)


def test_demo_quick_runs_on_the_bundled_model(tmp_path, capsys):
    assert cli.main(["demo", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("greedy", "best-of-N", "beam", "mcts"):
        assert name in out
    assert (tmp_path / "ponder-demo-tree.dot").is_file() and (tmp_path / "ponder-demo-tree.json").is_file()
