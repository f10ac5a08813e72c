"""The ``ponder`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def _cmd_info(args: argparse.Namespace) -> int:
    from ponder.info import collect

    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ponder.tasks.demo import run_demo

    n = args.problems if args.problems is not None else (6 if args.quick else 40)
    run_demo(num_problems=n, num_numbers=args.numbers, all_numbers=args.all_numbers, seed=args.seed,
             quick=args.quick, out_dir=args.out, progress=not args.no_progress, model_dir=args.model,
             constrained=not args.no_constraint)
    return 0


def _cmd_solve(args: argparse.Namespace) -> int:
    from ponder.tasks.demo import format_solution, solve

    out = solve(args.numbers, args.target, all_numbers=args.all_numbers, algorithm=args.algorithm,
                budget=args.budget, seed=args.seed, model_dir=args.model, progress=not args.no_progress,
                constrained=not args.no_constraint)
    print(format_solution(out))
    return 0 if out["check"].ok else 1


def _cmd_train(args: argparse.Namespace) -> int:
    from ponder.tasks.train import train_countdown

    metrics = train_countdown(args.out, steps=args.steps, seed=args.seed, batch_size=args.batch_size,
                              quick=args.quick, progress=not args.no_progress)
    print(json.dumps(metrics, indent=2, default=str))
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from ponder import __version__

    parser = argparse.ArgumentParser(
        prog="ponder",
        description="ponder: a test-time-compute engine for LLM reasoning (tree search on a shared paged KV cache).",
    )
    parser.add_argument("--version", action="version", version=f"ponder {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_info = sub.add_parser("info", help="version, CUDA build, visible GPUs, Triton, active op backend")
    p_info.add_argument("--json", action="store_true", help="print the information as JSON")
    p_info.set_defaults(func=_cmd_info)

    p_demo = sub.add_parser("demo", help="Countdown: greedy vs best-of-N vs beam search vs MCTS with a trained model")
    p_demo.add_argument("--quick", action="store_true", help="a few problems and one budget per strategy")
    p_demo.add_argument("--problems", type=_positive, default=None, help="number of problems (default 40; 6 with --quick)")
    p_demo.add_argument("--numbers", type=int, choices=range(3, 7), default=4, metavar="{3..6}",
                        help="numbers per problem (default 4)")
    p_demo.add_argument("--all-numbers", action="store_true", help="24-game rule: every number used exactly once")
    p_demo.add_argument("--seed", type=int, default=None,
                        help="problem seed (default: the model's held-out evaluation problems)")
    p_demo.add_argument("--out", default=".", help="directory for ponder-demo.png and the tree DOT/JSON")
    p_demo.add_argument("--model", default=None,
                        help="model directory from `ponder train countdown` (default: python/ponder/assets/countdown)")
    p_demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    p_demo.add_argument("--no-constraint", action="store_true",
                        help="let the policy write any text instead of legal steps only (an illegal line fails; "
                             "searches then sample at temperature 1 instead of 3)")
    p_demo.set_defaults(func=_cmd_demo)

    p_solve = sub.add_parser("solve", help="solve one Countdown problem, e.g. ponder solve 3 7 25 50 --target 175")
    p_solve.add_argument("numbers", type=_positive, nargs="+")
    p_solve.add_argument("--target", type=_positive, required=True)
    p_solve.add_argument("--all-numbers", action="store_true", help="24-game rule: every number used exactly once")
    p_solve.add_argument("--algorithm", choices=("mcts", "beam_search", "best_of_n", "greedy"), default="mcts")
    p_solve.add_argument("--budget", type=_positive, default=64,
                         help="MCTS expansions, beam width or N (default 64)")
    p_solve.add_argument("--seed", type=int, default=0)
    p_solve.add_argument("--model", default=None,
                         help="model directory from `ponder train countdown` (default: python/ponder/assets/countdown)")
    p_solve.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_solve.add_argument("--no-constraint", action="store_true",
                         help="let the policy write any text instead of legal steps only")
    p_solve.set_defaults(func=_cmd_solve)

    p_train = sub.add_parser("train", help="train the Countdown policy + value model from scratch")
    p_train.add_argument("task", choices=("countdown",))
    p_train.add_argument("--out", required=True, help="output directory (config.json, model.safetensors, tokenizer.json)")
    p_train.add_argument("--steps", type=_positive, default=None, help="optimizer steps (default: the shipped recipe)")
    p_train.add_argument("--batch-size", type=_positive, default=None)
    p_train.add_argument("--seed", type=int, default=0)
    p_train.add_argument("--quick", action="store_true", help="a toy model in seconds (for tests)")
    p_train.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_train.set_defaults(func=_cmd_train)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
