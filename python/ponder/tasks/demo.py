"""``ponder demo`` and ``ponder solve``: a Countdown model answering at once vs searching.

Every strategy runs on the same fixed, seeded problems with a policy + value model trained by
``ponder train countdown`` (``python/ponder/assets/countdown`` by default), on the CPU: greedy
decoding (one sample, no search), best-of-N, step-level beam search and MCTS, each at a few
budgets. Steps are lines; the value head scores each step. By default every strategy decodes
under :func:`legal_step_constraint`: the policy chooses which step to take, but can only write
legal ones (available operands, right arithmetic). Countdown's exact checker tells the search
when a path has finished (a line reached the target, or no legal move is left) and whether it
is right. A problem counts as solved only when the answer the search returns passes the checker
again, independently.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

import ponder
from ponder.tasks import countdown
from ponder.tasks.demo_plot import plot

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "countdown"
STEP_STOP = ponder.StepStop(strings=("\n",), max_step_tokens=24)
MAX_STEPS = 6  # 6 numbers need at most 5 lines; one spare for a wrong turn under the classic rule
# The searches decode under ``legal_step_constraint`` (the policy picks among legal steps) and
# keep distinct children; MCTS draws 12 steps per expansion at temperature 3 and refills a node
# whose leaves all failed. The sampling temperature only widens the draws: priors stay the
# policy's own probabilities. Chosen on 200 validation problems (4 numbers, classic rule,
# generator seed 1, not the held-out set) with the shipped model, 64 expansions: temperature
# 2.5 / 3 / 4 with 8 children: 96.0 / 96.0 / 93.5%; 12 children at 3: 97.0%; c_puct 0.5 / 2
# at 3: 94.5 / 94.5%.
SEARCH_TEMPERATURE = 3.0
MCTS_OPTIONS = dict(num_children=12, leaves_per_tree=1, c_puct=1.0, final="score", refill=True)
BEAM_EXPANSION = 4


def load_model(path: Optional[os.PathLike] = None):
    """(model, tokenizer) from a directory written by ``ponder train countdown`` (default: the
    package assets). Raises ``FileNotFoundError`` when there is no model file and ``ValueError``
    when the directory's files do not hold a Countdown model."""
    from ponder.tasks.train import load_countdown

    path = Path(path) if path is not None else ASSET_DIR
    if not (path / "model.safetensors").is_file():
        if path == ASSET_DIR:
            why = "the bundled model is missing from this installation: reinstall ponder, or "
        elif not path.exists():
            why = "no such directory; "
        elif not path.is_dir():
            why = "a file, not a directory; "
        else:
            why = "no model.safetensors in it; "
        raise FileNotFoundError(f"no Countdown model in {path}: {why}train one with `ponder train countdown "
                                f"--out DIR` and pass --model DIR")
    try:
        return load_countdown(path)
    except _checkpoint_errors() as err:
        raise ValueError(f"{path} does not hold a Countdown model: {type(err).__name__}: {err}") from err


def _checkpoint_errors() -> tuple:
    """What loading raises for files that are not a model: bad JSON or config, missing tensors,
    and safetensors' own error for a corrupted weights file (safetensors is optional)."""
    try:
        from safetensors import SafetensorError
    except ImportError:
        return (ValueError, KeyError)
    return (ValueError, KeyError, SafetensorError)


def held_out_problems(num_problems: int, num_numbers: int, all_numbers: bool, model_dir=None,
                      seed: Optional[int] = None) -> List[countdown.Problem]:
    """The demo's problems: by default the held-out evaluation problems of the model's training
    run (its value and target ranges, and the seeds ``ponder train`` keeps out of training), read
    from the model directory's ``metrics.json``; ``seed`` picks other problems from the same ranges."""
    path = Path(model_dir) if model_dir is not None else ASSET_DIR
    knobs, train_seed = {}, 0
    try:
        with open(path / "metrics.json") as f:
            metrics = json.load(f)
        cfg = metrics.get("config", {})
        knobs = {k: int(cfg[k]) for k in ("min_value", "max_value", "min_target", "max_target") if k in cfg}
        train_seed = int(metrics.get("seed", 0))
    except (OSError, ValueError):  # no training record: the generator's default ranges
        pass
    if seed is None:
        seed = train_seed + 7919 * (2 + int(all_numbers))  # the held-out seeds of ponder.tasks.evaluation
    return countdown.generate(num_problems, seed=seed, num_numbers=num_numbers, all_numbers=all_numbers, **knobs)


def verifier(problems: Sequence[countdown.Problem]) -> ponder.Verifier:
    """Ends a path when Countdown allows no further step; scores it 1 if solved, else 0."""

    def judge(index: int, text: str):
        lines = [ln for ln in text.split("\n") if ln.strip()]
        problem = problems[index]
        if not lines or (text.endswith("\n") and not countdown.is_terminal(problem, lines)):
            return None
        return countdown.check(problem, "\n".join(lines)).ok

    return ponder.Verifier(judge)


def _legal_lines(problems: Sequence[countdown.Problem]):
    """(problem index, finished lines text) -> the legal next lines (cached: MCTS asks often)."""
    legal: Dict[tuple, List[str]] = {}

    def lines(index: int, head: str) -> List[str]:
        key = (index, head)
        if key not in legal:
            done = head.split("\n") if head else []
            try:
                legal[key] = countdown.legal_steps(problems[index], done)
            except ValueError:  # an illegal line earlier on the path
                legal[key] = []
        return legal[key]

    return lines


def legal_step_constraint(problems: Sequence[countdown.Problem], tokenizer=None) -> ponder.StepConstraint:
    """Constrained decoding to Countdown's legal steps (``search(constraint=...)``), native.

    For a path's text, the allowed next steps are the :func:`~ponder.tasks.countdown.legal_steps`
    lines (available operands, larger-first, the right result) that continue its last, partial
    line, each with its newline; the engine masks every token to them in C++. The policy still
    chooses which step; it can no longer misspell one. None (no restriction) for a path that
    already holds an illegal line or has no legal step left; the verifier ends those.
    ``tokenizer`` is accepted for symmetry with :func:`legal_token_constraint` and unused.
    """
    lines = _legal_lines(problems)

    def steps(index: int, text: str):
        head, _, partial = text.rpartition("\n")
        nxt = [ln[len(partial):] + "\n" for ln in lines(index, head) if ln.startswith(partial)]
        return nxt or None

    return ponder.StepConstraint(steps)


def legal_token_constraint(problems: Sequence[countdown.Problem], tokenizer):
    """The same constraint as :func:`legal_step_constraint` in the general per-token form (a
    Python call per branch per token: the slow path, kept as the reference it is tested
    against): the allowed next characters keep the last, partial line a prefix of a legal line
    (newline included)."""
    ids = {}
    for ch in "0123456789+-*/= \n":
        enc = tokenizer.encode(ch)
        if len(enc) != 1:
            raise ValueError(f"legal_token_constraint needs one token per character; {ch!r} encodes to {enc}")
        ids[ch] = enc[0]
    lines = _legal_lines(problems)

    def allowed(index: int, text: str):
        head, _, partial = text.rpartition("\n")
        nxt = {ln[len(partial)] if len(ln) > len(partial) else "\n" for ln in lines(index, head)
               if ln.startswith(partial)}
        return [ids[c] for c in sorted(nxt)] or None

    return allowed


@dataclass
class Strategy:
    name: str
    label: str
    algorithm: str
    options: Dict = field(default_factory=dict)
    budget: Optional[ponder.Budget] = None
    temperature: float = 1.0
    distinct: bool = False


def _budget(**kw) -> ponder.Budget:
    return ponder.Budget(stop_on_verified=True, **kw)


def greedy_strategy() -> Strategy:
    return Strategy("greedy", "1 sample", "best_of_n", dict(n=1, max_steps=MAX_STEPS),
                    _budget(max_iterations=MAX_STEPS), temperature=0.0)


def best_of_n_strategy(n: int) -> Strategy:
    return Strategy("best-of-N", f"N={n}", "best_of_n", dict(n=n, max_steps=MAX_STEPS),
                    _budget(max_iterations=MAX_STEPS))


def beam_strategy(width: int) -> Strategy:
    return Strategy("beam", f"width {width}", "beam_search",
                    dict(width=width, expansion=BEAM_EXPANSION, max_steps=MAX_STEPS),
                    _budget(max_iterations=MAX_STEPS), temperature=SEARCH_TEMPERATURE, distinct=True)


def mcts_strategy(expansions: int) -> Strategy:
    # terminal leaves cost an iteration but no expansion: 16 per expansion is ample
    return Strategy("mcts", f"{expansions} expansions", "mcts", dict(MCTS_OPTIONS),
                    _budget(max_expansions=expansions, max_iterations=16 * expansions),
                    temperature=SEARCH_TEMPERATURE, distinct=True)


def strategies(quick: bool = False) -> List[Strategy]:
    out = [greedy_strategy()]
    out += [best_of_n_strategy(n) for n in ((4,) if quick else (4, 16))]
    out += [beam_strategy(w) for w in ((2,) if quick else (2, 4))]
    out += [mcts_strategy(e) for e in ((8,) if quick else (8, 16, 32, 64))]
    return out


def run_strategy(model, tok, problems: Sequence[countdown.Problem], s: Strategy, seed: int = 0,
                 progress: bool = False, constrained: bool = True, chunk: int = 50,
                 engine_options: Optional[Dict] = None):
    """Run strategy ``s`` on ``problems``, ``chunk`` problems per search call (a tree does not
    depend on the batch it is searched in, so chunking only bounds the KV memory).
    ``engine_options``: extra ``ponder.Engine`` arguments (e.g. ``dedup_rows=False``). The
    result's ``engine_stats`` sums the engines' counters over the chunks."""
    # Temperatures above 1 only widen the draws among legal steps; free decoding at 3 would
    # write noise, so without the constraint the searches sample at (at most) 1.
    temperature = s.temperature if constrained else min(s.temperature, 1.0)
    t0 = time.perf_counter()
    results = []
    counters: Dict[str, int] = {}
    for i in range(0, len(problems), chunk):
        part = problems[i:i + chunk]
        # MCTS at 64 expansions peaks near 100 pages per 4-number problem (3,800 for 40): a few
        # problems get a quarter of the pool, which is cheaper to allocate and zero
        eng = ponder.Engine(model, tok, num_pages=8192 if len(part) > 8 else 2048, page_size=16,
                            **(engine_options or {}))
        found = ponder.search([p.prompt() for p in part], eng, scorer="value", algorithm=s.algorithm,
                              budget=s.budget, seed=seed, verifier=verifier(part), stop=STEP_STOP,
                              sampling=ponder.SamplingParams(temperature=temperature), progress=progress,
                              constraint=legal_step_constraint(part, tok) if constrained else None,
                              distinct=s.distinct, **s.options)
        for r in found:
            r.release()  # no resume here: the results keep their snapshot, the KV goes
        results += found
        for name in ("tokens_decoded", "decode_rows_shared", "model_calls"):
            counters[name] = counters.get(name, 0) + getattr(eng.stats, name)
    wall = time.perf_counter() - t0
    solved = [countdown.check(p, r.answer).ok for p, r in zip(problems, results)]
    tokens = sum(r.stats["tokens_generated"] for r in results)
    return {"strategy": s.name, "budget": s.label, "solved": sum(solved) / len(problems),
            "tokens_per_problem": tokens / len(problems), "wall_s": wall, "results": results,
            "engine_stats": counters}


def print_table(rows, file=None) -> None:
    print(f"{'strategy':<10} {'budget':<15} {'solved':>7} {'tokens/problem':>15} {'wall s':>7}", file=file)
    for r in rows:
        print(f"{r['strategy']:<10} {r['budget']:<15} {100 * r['solved']:>6.1f}% {r['tokens_per_problem']:>15.1f} "
              f"{r['wall_s']:>7.2f}", file=file)


def learning_record(model_dir=None) -> Optional[Dict]:
    """The ``ponder learn`` record in the model directory's ``metrics.json``, or None."""
    path = Path(model_dir) if model_dir is not None else ASSET_DIR
    try:
        with open(path / "metrics.json") as f:
            return json.load(f).get("learning")
    except (OSError, ValueError):
        return None


def run_demo(num_problems: int = 40, num_numbers: int = 4, all_numbers: bool = False, seed: Optional[int] = None,
             quick: bool = False, out_dir: str = ".", progress: bool = True, model_dir=None,
             constrained: bool = True) -> List[Dict]:
    """Run every strategy on the same problems; print the table; write the plot and one tree.
    ``constrained=False`` lets the policy write any text (an illegal line ends its path)."""
    from ponder.tasks.paths import ensure_writable_dir

    ensure_writable_dir(out_dir, "out_dir")  # before the runs, not when writing their plot
    model, tok = load_model(model_dir)
    threads = torch.get_num_threads()
    # one thread: the ops of a model this small are too short to split across cores
    torch.set_num_threads(1)
    try:
        return _run_demo(model, tok, num_problems, num_numbers, all_numbers, seed, quick, out_dir, progress,
                         model_dir, constrained)
    finally:
        torch.set_num_threads(threads)


def _run_demo(model, tok, num_problems, num_numbers, all_numbers, seed, quick, out_dir, progress, model_dir,
              constrained) -> List[Dict]:
    problems = held_out_problems(num_problems, num_numbers, all_numbers, model_dir, seed)
    rule = "all numbers" if all_numbers else "any subset"
    which = "held-out problems" if seed is None else f"problems of seed {seed}"
    mode = "legal steps only" if constrained else "unconstrained decoding"
    print(f"Countdown: {num_problems} {which} with {num_numbers} numbers (rule: {rule}; {mode})")
    rows = []
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency; this only guards a broken install
        tqdm = None
    plan = strategies(quick)
    bar = tqdm(plan, desc="demo", unit="run", disable=not progress) if tqdm else plan
    for s in bar:
        if tqdm and progress:
            bar.set_postfix_str(f"{s.name} {s.label}")
        rows.append(run_strategy(model, tok, problems, s, constrained=constrained))
    print_table(rows)
    shared = None
    if not quick:
        mcts_rows = [r for r in rows if r["strategy"] == "mcts"]
        total = max(r["tokens_per_problem"] for r in mcts_rows) * len(problems)
        from ponder.tasks.demo_shared import print_shared, run_shared_budget, shared_budget_rows

        shared = run_shared_budget(model, tok, problems, int(total), constrained=constrained)
        print_shared(shared_budget_rows(rows, shared))
    learning = learning_record(model_dir)
    os.makedirs(out_dir, exist_ok=True)
    png = os.path.join(out_dir, "ponder-demo.png")
    if plot(rows, png, shared, learning):
        print(f"wrote {png}")
    else:
        print("matplotlib is not installed (pip install 'ponder[plot]'): no plot written")
    tree = next(r for r in reversed(rows) if r["strategy"] == "mcts")["results"][0]
    with open(os.path.join(out_dir, "ponder-demo-tree.dot"), "w") as f:
        f.write(tree.to_dot())
    with open(os.path.join(out_dir, "ponder-demo-tree.json"), "w") as f:
        f.write(tree.to_json())
    print(f"wrote {os.path.join(out_dir, 'ponder-demo-tree.dot')} and .json (MCTS tree of problem 0)")
    return rows


ALGORITHMS = ("mcts", "beam_search", "best_of_n", "greedy")
# When the search fails, the exact solver tells "unsolvable" from "not found" for up to this many
# numbers. Measured on distinct two-digit primes with an unreachable target: 6 numbers 0.8 s,
# 7 numbers 17 s; 8 numbers took 144 s even with a reachable one.
SOLVER_MAX_NUMBERS = 6


def _check_solve_args(algorithm: str, budget: int) -> None:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be mcts, beam_search, best_of_n or greedy, got {algorithm!r}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be an int >= 1, got {budget!r}")


def solve(numbers: Sequence[int], target: int, all_numbers: bool = False, algorithm: str = "mcts",
          budget: int = 64, seed: int = 0, model_dir=None, progress: bool = True, constrained: bool = True) -> Dict:
    """Solve one problem with the model in ``model_dir``; see :func:`solve_problem`."""
    _check_solve_args(algorithm, budget)
    problem = countdown.Problem(tuple(numbers), target, all_numbers)
    model, tok = load_model(model_dir)
    threads = torch.get_num_threads()
    # one thread, as in the demo: measured on 2 cores, `ponder solve 22 13 20 21 --target 36
    # --all-numbers` costs 4.7 s of CPU on one thread against 7.0 s (passive waiting) or 8.5 s
    # (spinning) on two, for no gain in wall time worth the extra CPU
    torch.set_num_threads(1)
    try:
        return solve_problem(model, tok, problem, algorithm, budget, seed, progress, constrained)
    finally:
        torch.set_num_threads(threads)


def solve_problem(model, tok, problem: countdown.Problem, algorithm: str = "mcts", budget: int = 64, seed: int = 0,
                  progress: bool = True, constrained: bool = True) -> Dict:
    """Search ``problem`` with ``algorithm`` at ``budget`` (MCTS expansions, beam width or N).

    Returns the problem, the result, the checked steps (``check``), the answer expression (None
    when not solved), ``solvable`` (None when solved or not checked, else whether the exact
    solver finds a solution: False proves there is none) and the wall time."""
    _check_solve_args(algorithm, budget)
    s = {"mcts": mcts_strategy, "beam_search": beam_strategy, "best_of_n": best_of_n_strategy,
         "greedy": lambda _: greedy_strategy()}[algorithm](budget)
    out = run_strategy(model, tok, [problem], s, seed=seed, progress=progress, constrained=constrained)
    result = out["results"][0]
    verdict = countdown.check(problem, result.answer)
    solvable = None
    if not verdict.ok and len(problem.numbers) <= SOLVER_MAX_NUMBERS:
        solvable = countdown.is_solvable(problem)
    return {"problem": problem, "result": result, "check": verdict,
            "answer": verdict.answer_expr if verdict.ok else None, "solvable": solvable, "wall_s": out["wall_s"]}


def format_solution(out: Dict) -> str:
    p, r, v = out["problem"], out["result"], out["check"]
    lines = [p.prompt().rstrip()]
    lines += [ln for ln in r.answer.split("\n") if ln.strip()]
    solvable = out.get("solvable")
    if v.ok:
        lines.append(f"answer: {v.answer_expr}")
    elif solvable is False:
        rule = "every number used once" if p.all_numbers else "any subset of the numbers"
        lines.append(f"no solution exists for {' '.join(map(str, p.numbers))} -> {p.target} ({rule}): the exact "
                     "solver tried every step sequence")
    elif solvable is None:
        lines.append(f"not solved: {v.reason} (the exact solver is not run on more than {SOLVER_MAX_NUMBERS} "
                     "numbers, so a solution may or may not exist)")
    else:
        lines.append(f"not solved: {v.reason} (a solution exists)")
    st = r.stats
    lines.append(json.dumps({"verified": bool(v.ok), "tokens_generated": st["tokens_generated"],
                             "expansions": st["expansions"], "model_calls": st["model_calls"],
                             "wall_s": round(out["wall_s"], 3), "stop_reason": st["stop_reason"]}))
    return "\n".join(lines)
