"""ponder learn: a tiny model learns a toy task from its own searches; trees -> examples; resume."""

import json
import os

import pytest
import torch

import ponder
from ponder.learn import LearnConfig, Task, learn, tree_examples
from ponder.learn.data import example_from_json, example_to_json
from ponder.models import DecoderLM, ModelConfig
from ponder.search.result import SearchResult
from ponder.tasks.tokenizer import CharTokenizer
from ponder.tasks.train import save_countdown

TOK = CharTokenizer()
DIGITS = "0123456789"


def answer_of(digit: int) -> int:
    return (3 * digit + 1) % 10


class DigitTask:
    """Prompt ``"d\n"``, answer the line ``(3d + 1) mod 10``: a ten-entry table that a model can
    only learn from its own verified searches. The ten problems are both the training and the
    validation set (nothing to hold out: the test measures learning, not generalisation)."""

    name = "digits"
    stop = ponder.StepStop(strings=("\n",), max_step_tokens=3)
    max_steps = 1

    def validation(self, num):
        return list(range(10))[:num]

    def held_out_keys(self):
        return set()

    def problems(self, num, seed):
        return [(seed + i) % 10 for i in range(num)]  # every digit, evenly

    def prompt(self, problem):
        return f"{problem}\n"

    def check(self, problem, text):
        return text.strip() == str(answer_of(problem))

    def verifier(self, problems):
        return ponder.Verifier(lambda i, text: float(self.check(problems[i], text)) if text.endswith("\n") else None)

    def constraint(self, problems, tokenizer):
        digits = [tokenizer.encode(c)[0] for c in DIGITS]
        newline = tokenizer.encode("\n")
        return lambda i, text: digits if text == "" else newline


def tiny_model_dir(tmp_path):
    cfg = ModelConfig(vocab_size=TOK.vocab_size, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                      num_kv_heads=1, head_dim=16, max_position_embeddings=32, tie_word_embeddings=True,
                      bos_token_id=TOK.bos_token_id, eos_token_id=TOK.eos_token_id, pad_token_id=TOK.pad_token_id)
    model = DecoderLM(cfg, value_head=True, init_std=0.02)
    model.init_weights(0.02, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "start"
    save_countdown(model, TOK, path)
    return path


# 3 children per expansion at temperature 2: the first expansion rarely holds the answer, so
# MCTS at eval_expansions=1 is not trivially right either
TOY = LearnConfig(rounds=2, problems_per_round=40, search_expansions=8, num_children=3, temperature=2.0,
                  steps_per_round=100, batch_size=16, lr=3e-3, warmup_steps=5, replay_rounds=2, eval_problems=10,
                  eval_expansions=1, anchor_fraction=0.0)
CHEAP = LearnConfig(**dict(TOY.__dict__, problems_per_round=10, steps_per_round=10))


def test_digit_task_is_a_task():
    assert isinstance(DigitTask(), Task)


def test_a_tiny_model_learns_the_toy_task_from_its_own_searches(tmp_path):
    record = learn(DigitTask(), tiny_model_dir(tmp_path), tmp_path / "run", TOY, progress=False, log=None)
    rows = record["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    # an untrained model guesses among ten digits (chance 10%); two rounds of 100 steps on its
    # own verified answers must teach it most of the table
    assert rows[0]["greedy_solved"] <= 0.3
    assert rows[-1]["greedy_solved"] >= rows[0]["greedy_solved"] + 0.5
    assert rows[1]["policy_examples"] > 0 and rows[1]["final_policy_loss"] < rows[1]["first_policy_loss"]
    best = max(rows, key=lambda r: (r["mcts_solved"], r["greedy_solved"], -r["round"]))
    assert record["best_round"] == best["round"]
    with open(tmp_path / "run" / "best" / "metrics.json") as f:
        assert json.load(f)["learning"]["best_round"] == best["round"]


def test_learning_resumes_at_the_first_unfinished_round(tmp_path):
    start, out = tiny_model_dir(tmp_path), tmp_path / "run"
    one = dict(CHEAP.__dict__, rounds=1)
    first = learn(DigitTask(), start, out, LearnConfig(**one), progress=False, log=None)
    lines = []
    resumed = learn(DigitTask(), start, out, CHEAP, progress=False, log=lines.append)
    assert lines[0].startswith("resuming at round 2")
    assert resumed["rounds"][:2] == first["rounds"]  # rounds 0 and 1 are read back, not rerun
    assert [r["round"] for r in resumed["rounds"]] == [0, 1, 2]
    fresh = learn(DigitTask(), start, tmp_path / "fresh", CHEAP, progress=False, log=None)
    for key in ("greedy_solved", "mcts_solved", "policy_examples", "value_examples"):
        assert fresh["rounds"][2][key] == resumed["rounds"][2][key]


def _result(parents, tokens, visits, values, terminal):
    nodes = {"parent": parents, "tokens": tokens, "text": [TOK.decode(t) for t in tokens], "visits": visits,
             "value": values, "reward": values, "path_score": values, "terminal": terminal,
             "depth": [0] * len(parents), "prior": [1.0] * len(parents)}
    return SearchResult("mcts", 0, "", [], False, 0.0, "verified", [0], nodes, {})


def test_tree_examples_weigh_steps_by_visit_share_and_mix_outcome_with_value():
    # root (prompt "7\n") -> a "1\n" (3 visits) -> c "2\n" verified; root -> b "3\n" (1 visit);
    # a -> d "4\n" (0 visits, never labelled)
    enc = lambda s: TOK.encode(s)  # noqa: E731
    r = _result(parents=[-1, 0, 0, 1, 1], tokens=[enc("7\n"), enc("1\n"), enc("3\n"), enc("2\n"), enc("4\n")],
                visits=[4, 3, 1, 2, 0], values=[0.5, 0.6, 0.2, 1.0, 0.0], terminal=[False, False, True, True, False])
    ex = tree_examples(r, lambda text: text == "1\n2\n", TOK.eos_token_id, outcome_weight=0.5)
    [pol] = ex["policy"]
    assert list(pol.ids) == enc("7\n1\n2\n") + [TOK.eos_token_id]
    assert pol.target_spans == ((1, 3, 0.75), (3, 5, 1.0), (5, 6, 1.0))
    labels = {}
    for e in ex["value"]:
        for pos, lab in zip(e.value_positions, e.value_labels):
            labels[TOK.decode(list(e.ids[:pos + 1]))] = lab
    assert labels == pytest.approx({"7\n": 0.75, "7\n1\n": 0.8, "7\n1\n2\n": 1.0, "7\n3\n": 0.1})
    assert example_from_json(example_to_json(pol)) == pol


@pytest.mark.parametrize("kwargs, match", [(dict(rounds=0), "rounds"), (dict(outcome_weight=1.5), "outcome_weight"),
                                           (dict(lr=0), "lr")])
def test_learn_config_names_the_bad_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LearnConfig(**kwargs)


def test_learn_rejects_an_object_that_is_not_a_task(tmp_path):
    with pytest.raises(TypeError, match="task must implement"):
        learn(object(), tmp_path, tmp_path / "out", TOY, log=None)
    assert not os.path.exists(tmp_path / "out" / "round-000")


def test_cli_learn_reports_an_unwritable_out_directory_in_one_line(tmp_path, capsys):
    from ponder.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SystemExit) as err:
        main(["learn", "countdown", "--out", str(blocker), "--rounds", "1", "--no-progress"])
    assert err.value.code == 2
    assert "--out must be a directory" in capsys.readouterr().err
