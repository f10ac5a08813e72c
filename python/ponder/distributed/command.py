"""``ponder run``: search a JSONL file of problems (or generated Countdown problems) in process
or over Ray workers, writing one resumable JSONL record per problem.

Only the standard library is imported here, so ``ponder run --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import List

RUN_HELP = "search many problems (a JSONL file, or --task countdown --problems N), resumable JSONL out"


def add_arguments(p: argparse.ArgumentParser, int_type) -> None:
    """The options of ``ponder run``; ``int_type(lo)`` is the CLI's bounded-int argparse type."""
    p.add_argument("problems_file", nargs="?", default=None, metavar="PROBLEMS.jsonl",
                   help='one JSON object per line: {"id": ..., "prompt": ...} (text task) or '
                        '{"id": ..., "numbers": [...], "target": N} (countdown)')
    p.add_argument("--task", choices=("text", "countdown"), default=None,
                   help="text (default with a problems file) or countdown (the built-in task: verifier, "
                        "legal-step constraint, value head)")
    p.add_argument("--problems", type=int_type(1), default=None, metavar="N",
                   help="with --task countdown and no file: N generated problems")
    p.add_argument("--seed", type=int_type(0), default=0,
                   help="search seed; with --problems also the problem generator's seed (default 0)")
    p.add_argument("--model", default=None,
                   help="checkpoint directory or .gguf file (countdown: default the bundled model)")
    p.add_argument("--out", required=True, metavar="RESULTS.jsonl",
                   help="results file; re-running with the same file skips the ids already in it")
    p.add_argument("--algorithm", choices=("mcts", "beam_search", "best_of_n"), default="mcts")
    p.add_argument("--budget", type=int_type(1), default=16, help="MCTS expansions, beam width or N (default 16)")
    p.add_argument("--batch-size", type=int_type(1), default=8, help="problems per search call (default 8)")
    p.add_argument("--workers", type=int_type(0), default=0,
                   help="Ray actors, one engine each (default 0: in this process, no Ray)")
    p.add_argument("--ray-address", default=None,
                   help="an existing Ray cluster, e.g. 'auto' or 'ray://HEAD:10001' (default: a local one)")
    p.add_argument("--max-step-tokens", type=int_type(1), default=128, help="text task: tokens per step")
    p.add_argument("--max-steps", type=int_type(1), default=8, help="text task: steps per path (beam, best-of-N)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@dataclass
class Plan:
    problems: List[dict]
    spec: object
    out: str
    workers: int
    ray_address: object
    progress: bool


def prepare(args: argparse.Namespace) -> Plan:
    """Check the arguments and read or generate the problems; raises ValueError / OSError naming
    the option before any long work."""
    task = args.task or ("text" if args.problems_file else None)
    if task is None:
        raise ValueError("give a PROBLEMS.jsonl file, or --task countdown --problems N")
    if args.problems_file and args.problems is not None:
        raise ValueError("--problems generates Countdown problems: give it or a PROBLEMS.jsonl file, not both")
    if task == "text" and not args.problems_file:
        raise ValueError("the text task reads its problems from a PROBLEMS.jsonl file")
    if task == "countdown" and not args.problems_file and args.problems is None:
        raise ValueError("--task countdown needs --problems N (or a PROBLEMS.jsonl file)")
    if args.ray_address and args.workers == 0:
        raise ValueError("--ray-address needs --workers K (K >= 1)")
    if task == "text" and not args.model:
        raise ValueError("--model is required for the text task (a checkpoint directory or .gguf file)")
    if args.model and not os.path.exists(args.model):
        raise FileNotFoundError(f"--model: no such file or directory: {args.model!r}")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"--out: the directory {out_dir!r} does not exist")
    if os.path.isdir(args.out):
        raise IsADirectoryError(f"--out: {args.out!r} is a directory; give a file path")
    if args.workers:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ValueError("--workers needs Ray: pip install 'ponder[distributed]'") from None
    from ponder.distributed.records import read_problems
    from ponder.distributed.searcher import RunSpec

    if args.problems_file:
        problems = read_problems(args.problems_file, task)
    else:
        problems = countdown_problems(args.problems, args.seed, args.model)
    spec = RunSpec(task=task, model=args.model, algorithm=args.algorithm, budget=args.budget, seed=args.seed,
                   batch_size=args.batch_size, max_step_tokens=args.max_step_tokens, max_steps=args.max_steps)
    return Plan(problems, spec, args.out, args.workers, args.ray_address, not args.no_progress)


def countdown_problems(n: int, seed: int, model_dir=None) -> List[dict]:
    """``n`` four-number Countdown problems (classic rule) of generator seed ``seed``, drawn from
    the model's training ranges, with ids ``"countdown-SEED-I"``."""
    from ponder.tasks.demo import held_out_problems

    probs = held_out_problems(n, 4, False, model_dir, seed)
    return [{"id": f"countdown-{seed}-{i}", "numbers": list(p.numbers), "target": p.target,
             "all_numbers": p.all_numbers} for i, p in enumerate(probs)]


def execute(plan: Plan) -> int:
    from ponder.distributed.runner import run

    s = run(plan.problems, plan.spec, plan.out, workers=plan.workers, ray_address=plan.ray_address,
            progress=plan.progress)
    where = f"{s.workers} Ray workers" if s.workers else "in process"
    print(f"{s.written} problems searched ({where}), {s.skipped} already in {plan.out}; "
          f"{s.wall_s:.1f} s, {s.problems_per_s:.2f} problems/s"
          + (f"; {s.retried_batches} batches retried after a worker died" if s.retried_batches else ""))
    return 0
