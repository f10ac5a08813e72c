"""``ponder learn``: search with the current model, train on the trees, evaluate, repeat.

Round ``r`` (1-based) of :func:`learn`:

1. search ``problems_per_round`` fresh training problems of the task with the current model
   (native engine, batched MCTS under the task's constraint and verifier);
2. turn the trees into examples (:func:`ponder.learn.data.tree_examples`): the policy on the
   steps of verified paths weighted by visit share, the value head on every visited node with
   its trajectory's outcome mixed with its backed-up value;
3. train ``steps_per_round`` AdamW steps from the current weights on the examples of the last
   ``replay_rounds`` rounds (plus ``anchor_fraction`` of each batch from the task's supervised
   sampler, when it has one);
4. evaluate on the task's validation problems (greedy and MCTS at ``eval_expansions``), and
   keep the best round's model in ``out_dir/best``.

Every round writes ``out_dir/round-RRR/`` (the model, its examples, ``record.json`` last), so an
interrupted run resumes at the first round without a record. Round 0 is the starting model's
evaluation. ``out_dir/learning.json`` holds the configuration and the per-round table.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
import time
from typing import Any, Dict, List, Optional

import torch

import ponder
from ponder.learn import data as learn_data
from ponder.learn.task import Task

logger = logging.getLogger(__name__)
RECORD_FILE = "learning.json"


@dataclasses.dataclass(frozen=True)
class LearnConfig:
    """Search, training and evaluation knobs of one learning run.

    The search settings default to the demo's MCTS (12 distinct children per expansion sampled at
    temperature 3 under the legal-step constraint, refill). ``lr`` is the pre-training schedule's
    final rate: the run continues a converged model rather than restarting its warm-up.
    """

    rounds: int = 6
    problems_per_round: int = 200
    search_expansions: int = 32
    num_children: int = 12
    temperature: float = 3.0
    steps_per_round: int = 300
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    value_weight: float = 1.0
    outcome_weight: float = 0.5
    anchor_fraction: float = 0.25
    replay_rounds: int = 2
    eval_problems: int = 200
    eval_expansions: int = 16
    chunk: int = 50

    def __post_init__(self):
        for name in ("rounds", "problems_per_round", "search_expansions", "num_children", "steps_per_round",
                     "batch_size", "replay_rounds", "eval_problems", "eval_expansions", "chunk"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"LearnConfig.{name} must be a positive int, got {v!r}")
        for name in ("outcome_weight", "anchor_fraction"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"LearnConfig.{name} must lie in [0, 1], got {v!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"LearnConfig.lr must be > 0, got {self.lr!r}")


def run_search(model, tokenizer, task: Task, problems, algorithm: str, budget, seed: int, cfg: LearnConfig,
               temperature: float, **options) -> List:
    """Search ``problems`` ``cfg.chunk`` at a time (a tree does not depend on its batch); the
    results are released (their snapshot stays, the KV goes)."""
    results = []
    for i in range(0, len(problems), cfg.chunk):
        part = problems[i:i + cfg.chunk]
        engine = ponder.Engine(model, tokenizer, num_pages=8192, page_size=16)
        found = ponder.search([task.prompt(p) for p in part], engine, scorer="value", algorithm=algorithm,
                              budget=budget, seed=seed, verifier=task.verifier(part), stop=task.stop,
                              sampling=ponder.SamplingParams(temperature=temperature), progress=False,
                              constraint=task.constraint(part, tokenizer), **options)
        for r in found:
            r.release()
        results += found
    return results


def mcts_search(model, tokenizer, task: Task, problems, expansions: int, seed: int, cfg: LearnConfig) -> List:
    # terminal leaves cost an iteration but no expansion: 16 iterations per expansion is ample
    budget = ponder.Budget(max_expansions=expansions, max_iterations=16 * expansions, stop_on_verified=True)
    return run_search(model, tokenizer, task, problems, "mcts", budget, seed, cfg, cfg.temperature,
                      distinct=True, num_children=cfg.num_children, leaves_per_tree=1, c_puct=1.0, final="score",
                      refill=True)


def evaluate(model, tokenizer, task: Task, cfg: LearnConfig) -> Dict[str, float]:
    """Solve rates on the validation problems: greedy (one sample at temperature 0, constrained)
    and MCTS at ``cfg.eval_expansions``, search seed 0; tokens generated per problem."""
    problems = task.validation(cfg.eval_problems)
    out: Dict[str, float] = {}
    greedy_budget = ponder.Budget(max_iterations=task.max_steps, stop_on_verified=True)
    runs = {"greedy": run_search(model, tokenizer, task, problems, "best_of_n", greedy_budget, 0, cfg, 0.0, n=1,
                                 max_steps=task.max_steps),
            "mcts": mcts_search(model, tokenizer, task, problems, cfg.eval_expansions, 0, cfg)}
    for name, results in runs.items():
        out[f"{name}_solved"] = sum(task.check(p, r.answer) for p, r in zip(problems, results)) / len(problems)
        out[f"{name}_tokens"] = sum(r.stats["tokens_generated"] for r in results) / len(problems)
    return out


def _batches(pools: Dict[str, list], anchor, cfg: LearnConfig, rng: random.Random, pad_id: int):
    """Endless batches: ``anchor_fraction`` anchor examples, the rest half policy, half value."""
    from ponder.tasks.traces import collate

    n_anchor = round(cfg.batch_size * cfg.anchor_fraction) if anchor is not None else 0
    rest = cfg.batch_size - n_anchor
    n_policy = rest // 2 if pools["value"] else rest
    if not pools["policy"]:
        n_policy = 0
    n_value = rest - n_policy if pools["value"] else 0
    while True:
        batch = [rng.choice(pools["policy"]) for _ in range(n_policy)]
        batch += [rng.choice(pools["value"]) for _ in range(n_value)]
        batch += [anchor.example() for _ in range(n_anchor)]
        yield collate(batch, pad_id)


def train_round(model, pools: Dict[str, list], anchor, cfg: LearnConfig, seed: int, bar=None) -> Dict[str, float]:
    """``cfg.steps_per_round`` AdamW steps on the joint loss; returns the mean losses of the
    first and the last tenth of the steps."""
    from ponder.tasks.train import make_optimizer, train_step

    torch.manual_seed(seed)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    batches = _batches(pools, anchor, cfg, random.Random(seed), model.config.pad_token_id)
    history = []
    model.train()
    for step in range(cfg.steps_per_round):
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
        parts = train_step(model, opt, next(batches), lr, cfg.value_weight, cfg.grad_clip)
        history.append(parts)
        if bar is not None:
            bar.set_postfix_str(f"train {step + 1}/{cfg.steps_per_round} loss {parts['loss']:.3f}")
    model.eval()
    tenth = max(1, len(history) // 10)
    out = {}
    for key in ("loss", "policy_loss", "value_loss"):
        out[f"first_{key}"] = sum(h[key] for h in history[:tenth]) / tenth
        out[f"final_{key}"] = sum(h[key] for h in history[-tenth:]) / tenth
    return out


def _round_dir(out_dir: str, r: int) -> str:
    return os.path.join(out_dir, f"round-{r:03d}")


def _save_model(model, tokenizer, path: str, base_metrics: Dict[str, Any], record: Dict[str, Any]) -> None:
    from ponder.tasks.train import METRICS_FILE, save_countdown

    os.makedirs(path, exist_ok=True)
    save_countdown(model, tokenizer, path)
    with open(os.path.join(path, METRICS_FILE), "w") as f:
        json.dump({**base_metrics, "learning": record}, f, indent=2)


def _load_round(path: str):
    from ponder.tasks.train import load_countdown

    model, tokenizer = load_countdown(path)
    with open(os.path.join(path, "record.json")) as f:
        return model, tokenizer, json.load(f)


def learn(task: Task, model_dir, out_dir, config: Optional[LearnConfig] = None, seed: int = 0,
          progress: bool = True, num_threads: Optional[int] = 1, log=print) -> Dict[str, Any]:
    """Run ``config.rounds`` rounds of search -> train -> evaluate from the model in ``model_dir``
    (written by ``ponder train``); returns the learning record (also in ``out_dir/learning.json``).

    Seeded: the same ``seed``, config and thread count give the same models. Resumes from the
    last finished round in ``out_dir``. ``log`` receives the per-round table, one line per round
    (None: silent). ``num_threads``: torch intra-op threads for the run (None: leave them).
    """
    from ponder.tasks.paths import ensure_writable_dir
    from ponder.tasks.train import METRICS_FILE, load_countdown

    cfg = config if config is not None else LearnConfig()
    if not isinstance(cfg, LearnConfig):
        raise TypeError(f"config must be a LearnConfig, got {type(cfg).__name__}")
    if not isinstance(task, Task):
        raise TypeError(f"task must implement ponder.learn.Task, got {type(task).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    out_dir = ensure_writable_dir(out_dir, "out_dir")
    threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        model, tokenizer = load_countdown(model_dir)
        try:
            with open(os.path.join(os.fspath(model_dir), METRICS_FILE)) as f:
                base = json.load(f)
        except (OSError, ValueError):
            base = {}
        base = {k: v for k, v in base.items() if k not in ("loss_history", "learning")}
        return _learn(task, model, tokenizer, base, out_dir, cfg, seed, progress, log)
    finally:
        torch.set_num_threads(threads)


def _learn(task, model, tokenizer, base, out_dir, cfg, seed, progress, log) -> Dict[str, Any]:
    rows: List[Dict[str, Any]] = []
    buffers: List[Dict[str, list]] = []
    start = 0
    while os.path.isfile(os.path.join(_round_dir(out_dir, start), "record.json")):
        start += 1
    if start:  # resume: the last finished round's model, the examples of the rounds the replay keeps
        model, tokenizer, _ = _load_round(_round_dir(out_dir, start - 1))
        for r in range(start):
            with open(os.path.join(_round_dir(out_dir, r), "record.json")) as f:
                rows.append(json.load(f))
        for r in range(max(1, start - cfg.replay_rounds), start):
            with open(os.path.join(_round_dir(out_dir, r), "examples.json")) as f:
                stored = json.load(f)
            buffers.append({k: [learn_data.example_from_json(d) for d in v] for k, v in stored.items()})
        log and log(f"resuming at round {start} from {out_dir}")
    log and log(_header())
    for row in rows:
        log and log(_line(row))
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.rounds + 1, initial=start, desc=f"learn {task.name}", unit="round", disable=not progress)
    try:
        for r in range(start, cfg.rounds + 1):
            row = _run_round(task, model, tokenizer, cfg, seed, r, buffers, bar)
            rows.append(row)
            best = max(rows, key=_rank)
            record = {"task": task.name, "seed": seed, "config": dataclasses.asdict(cfg), "rounds": rows,
                      "best_round": best["round"]}
            path = _round_dir(out_dir, r)
            _save_model(model, tokenizer, path, base, record)
            if r:
                with open(os.path.join(path, "examples.json"), "w") as f:
                    json.dump({k: [learn_data.example_to_json(e) for e in v] for k, v in buffers[-1].items()}, f)
            with open(os.path.join(path, "record.json"), "w") as f:
                json.dump(row, f, indent=2)
            with open(os.path.join(out_dir, RECORD_FILE), "w") as f:
                json.dump(record, f, indent=2)
            best_dir = os.path.join(out_dir, "best")
            shutil.rmtree(best_dir, ignore_errors=True)
            shutil.copytree(_round_dir(out_dir, best["round"]), best_dir,
                            ignore=shutil.ignore_patterns("examples.json", "record.json"))
            with open(os.path.join(best_dir, "metrics.json"), "w") as f:
                json.dump({**base, "learning": record}, f, indent=2)
            log and log(_line(row))
            bar.update(1)
    finally:
        bar.close()
    with open(os.path.join(out_dir, RECORD_FILE)) as f:
        return json.load(f)


def _run_round(task, model, tokenizer, cfg, seed, r, buffers, bar) -> Dict[str, Any]:
    row: Dict[str, Any] = {"round": r}
    tic = time.perf_counter()
    if r:
        bar.set_postfix_str("search")
        problems = task.problems(cfg.problems_per_round, seed * 1000 + r)
        results = mcts_search(model, tokenizer, task, problems, cfg.search_expansions, seed * 1000 + r, cfg)
        pools: Dict[str, list] = {"policy": [], "value": []}
        for p, res in zip(problems, results):
            ex = learn_data.tree_examples(res, lambda text, p=p: task.check(p, text), tokenizer.eos_token_id,
                                          cfg.outcome_weight)
            pools["policy"] += ex["policy"]
            pools["value"] += ex["value"]
        row["train_solved"] = sum(task.check(p, res.answer) for p, res in zip(problems, results)) / len(problems)
        row["train_tokens"] = sum(res.stats["tokens_generated"] for res in results) / len(problems)
        row["policy_examples"], row["value_examples"] = len(pools["policy"]), len(pools["value"])
        row["search_s"] = time.perf_counter() - tic
        buffers.append(pools)
        del buffers[:-cfg.replay_rounds]
        merged = {k: [e for b in buffers for e in b[k]] for k in ("policy", "value")}
        tic = time.perf_counter()
        anchor = None  # a fresh stream per round, so that a resumed run draws what a straight one does
        if cfg.anchor_fraction > 0 and hasattr(task, "anchor_sampler"):
            anchor = task.anchor_sampler(tokenizer, seed * 1000 + r, model.config.max_position_embeddings)
        if merged["policy"] or merged["value"]:
            row.update(train_round(model, merged, anchor, cfg, seed * 1000 + r, bar))
        row["train_s"] = time.perf_counter() - tic
    bar.set_postfix_str("evaluate")
    tic = time.perf_counter()
    row.update(evaluate(model, tokenizer, task, cfg))
    row["eval_s"] = time.perf_counter() - tic
    return row


def _rank(row: Dict[str, Any]):
    """Best round: most validation problems solved by MCTS, then by greedy decoding, then earliest."""
    return row["mcts_solved"], row["greedy_solved"], -row["round"]


def _header() -> str:
    return (f"{'round':>5} {'train solved':>12} {'policy ex':>9} {'value ex':>9} {'loss':>11} "
            f"{'greedy':>7} {'mcts':>7} {'minutes':>7}")


def _line(row: Dict[str, Any]) -> str:
    loss = f"{row['first_loss']:.2f}->{row['final_loss']:.2f}" if "final_loss" in row else "-"
    train = f"{100 * row['train_solved']:.1f}%" if "train_solved" in row else "-"
    minutes = sum(row.get(k, 0.0) for k in ("search_s", "train_s", "eval_s")) / 60
    return (f"{row['round']:>5} {train:>12} {row.get('policy_examples', '-'):>9} {row.get('value_examples', '-'):>9} "
            f"{loss:>11} {100 * row['greedy_solved']:>6.1f}% {100 * row['mcts_solved']:>6.1f}% {minutes:>7.1f}")


def format_table(record: Dict[str, Any]) -> str:
    """The per-round table of a learning record."""
    return "\n".join([_header()] + [_line(row) for row in record["rounds"]])
