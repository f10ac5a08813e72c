"""The ``ponder`` command line.

Only :mod:`ponder._version` is imported up front, so ``--help`` and ``--version`` answer without
loading torch; each command imports what it needs. A mistake in the input (a number out of
range, a missing or broken model directory, an output directory that cannot be written) ends
the command before any long work with one line on stderr, ``ponder: error: ...``, and exit
status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from typing import Iterator, List, NoReturn, Optional

from ponder._version import __version__

USAGE_ERROR = 2


class UsageError(Exception):
    """A mistake in the command's input: reported in one line with exit status 2."""


def _exit_usage(message: str) -> NoReturn:
    sys.stderr.write(f"ponder: error: {message}\n")
    raise SystemExit(USAGE_ERROR)


@contextlib.contextmanager
def _user_input(name: Optional[str] = None) -> Iterator[None]:
    """Turn the ValueError / TypeError / OSError raised while checking the value of option
    ``name`` into a UsageError (prefixed with ``name`` when the message does not say it)."""
    try:
        yield
    except (ValueError, TypeError, OSError) as err:
        raise UsageError(f"{name}: {err}" if name else str(err)) from None


class _Int:
    """argparse type: an int in ``[minimum, maximum]``. Errors say the range, never this name."""

    def __init__(self, minimum: int, maximum: Optional[int] = None):
        self.minimum, self.maximum = minimum, maximum
        self.expected = f"an int >= {minimum}" if maximum is None else f"an int from {minimum} to {maximum}"

    def __call__(self, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.expected}, got {text!r}") from None
        if value < self.minimum or (self.maximum is not None and value > self.maximum):
            raise argparse.ArgumentTypeError(f"must be {self.expected}, got {value}")
        return value


class _Parser(argparse.ArgumentParser):
    """One line per mistake (no usage block), as every command's own checks report."""

    def error(self, message: str) -> NoReturn:
        # argparse writes "argument --budget: must be ..."; lead with the option instead
        m = re.fullmatch(r"argument (\S+): (must be .*)", message, flags=re.DOTALL)
        if m:
            message = f"{m.group(1)} {m.group(2)}"
        _exit_usage(f"{message} (see `{self.prog} --help`)")


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


def _one_thread() -> None:
    """The Countdown model is tiny: its ops are too short to split across cores, and idle
    OpenMP / MKL pools cost CPU. Measured on 2 cores, ``ponder solve 22 13 20 21 --target 36
    --all-numbers``: 4.5 s wall / 4.4 s CPU with one thread, 7.0 s / 7.0 s without this
    (torch.set_num_threads(1) after start-up did not stop MKL's pool). Set before torch loads;
    an explicit OMP_NUM_THREADS / MKL_NUM_THREADS wins."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


def _cmd_demo(args: argparse.Namespace) -> int:
    _one_thread()
    from ponder.tasks.paths import ensure_writable_dir

    with _user_input():
        ensure_writable_dir(args.out, "--out")
    from ponder.tasks.demo import load_model, run_demo

    with _user_input("--model"):
        load_model(args.model)
    n = args.problems if args.problems is not None else (6 if args.quick else 40)
    run_demo(num_problems=n, num_numbers=args.numbers, all_numbers=args.all_numbers, seed=args.seed,
             quick=args.quick, out_dir=args.out, progress=not args.no_progress, model_dir=args.model,
             constrained=not args.no_constraint)
    return 0


def _cmd_solve(args: argparse.Namespace) -> int:
    _one_thread()
    from ponder.tasks import countdown

    if not 2 <= len(args.numbers) <= countdown.MAX_NUMBERS:
        raise UsageError(f"solve takes 2 to {countdown.MAX_NUMBERS} numbers, got {len(args.numbers)}: "
                         f"{' '.join(map(str, args.numbers))}")
    with _user_input():
        problem = countdown.Problem(tuple(args.numbers), args.target, args.all_numbers)
    from ponder.tasks.demo import format_solution, load_model, solve_problem

    with _user_input("--model"):
        model, tok = load_model(args.model)
    out = solve_problem(model, tok, problem, algorithm=args.algorithm, budget=args.budget, seed=args.seed,
                        progress=not args.no_progress, constrained=not args.no_constraint)
    print(format_solution(out))
    return 0 if out["check"].ok else 1


def _cmd_train(args: argparse.Namespace) -> int:
    from ponder.tasks.paths import ensure_writable_dir

    with _user_input():
        ensure_writable_dir(args.out, "--out")
    from ponder.tasks.train import train_countdown

    metrics = train_countdown(args.out, steps=args.steps, seed=args.seed, batch_size=args.batch_size,
                              quick=args.quick, progress=not args.no_progress)
    print(json.dumps(metrics, indent=2, default=str))
    return 0


def _cmd_learn(args: argparse.Namespace) -> int:
    from ponder.tasks.paths import ensure_writable_dir

    with _user_input():
        ensure_writable_dir(args.out, "--out")
    from ponder.learn import CountdownTask, LearnConfig, learn
    from ponder.tasks.demo import ASSET_DIR, load_model

    with _user_input("--model"):
        _, tokenizer = load_model(args.model)
    knobs = {k: v for k, v in (("rounds", args.rounds), ("problems_per_round", args.problems),
                               ("search_expansions", args.expansions), ("steps_per_round", args.steps))
             if v is not None}
    model_dir = args.model if args.model is not None else ASSET_DIR
    record = learn(CountdownTask.from_model_dir(model_dir, tokenizer), model_dir, args.out, LearnConfig(**knobs),
                   seed=args.seed, progress=not args.no_progress)
    print(f"best round {record['best_round']}: model in {args.out}/best")
    return 0


def _kv_bytes(text: str) -> int:
    """argparse type: bytes as an int with an optional K / M / G suffix (powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", text, flags=re.IGNORECASE)
    if m is None or int(m.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of bytes such as 268435456 or 256M, got {text!r}")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2).upper()]


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise UsageError(f"serve needs FastAPI and uvicorn ({err}); install them with pip install 'ponder[serve]'")
    from ponder.serve import build_backend, run

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    with _user_input("--model / --prm"):
        backend = build_backend(model=args.model, prm=args.prm, max_kv_bytes=args.max_kv_bytes,
                                model_id=args.model_name, prm_good=args.prm_good, prm_bad=args.prm_bad,
                                prm_step_tag=args.prm_step_tag, algorithm=args.algorithm,
                                drop_unknown_chars=args.drop_unknown_chars, truncate_prompts=args.truncate_prompts)
    run(backend, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from ponder.distributed.command import execute, prepare

    with _user_input():
        plan = prepare(args)
    return execute(plan)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ponder",
        description="ponder: a test-time-compute engine for LLM reasoning (tree search on a shared paged KV cache).",
    )
    parser.add_argument("--version", action="version", version=f"ponder {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_info = sub.add_parser("info", help="version, CUDA build, visible GPUs, Triton, CPU threads, active op backend")
    p_info.add_argument("--json", action="store_true", help="print the information as JSON")
    p_info.set_defaults(func=_cmd_info)

    model_help = "model directory from `ponder train countdown` (default: python/ponder/assets/countdown)"
    p_demo = sub.add_parser("demo", help="Countdown: greedy vs best-of-N vs beam search vs MCTS with a trained model")
    p_demo.add_argument("--quick", action="store_true", help="a few problems and one budget per strategy")
    p_demo.add_argument("--problems", type=_Int(1), default=None, help="number of problems (default 40; 6 with --quick)")
    p_demo.add_argument("--numbers", type=_Int(3, 6), default=4, metavar="{3..6}", help="numbers per problem (default 4)")
    p_demo.add_argument("--all-numbers", action="store_true", help="24-game rule: every number used exactly once")
    p_demo.add_argument("--seed", type=_Int(0), default=None,
                        help="problem seed (default: the model's held-out evaluation problems)")
    p_demo.add_argument("--out", default=".", help="directory for ponder-demo.png and the tree DOT/JSON")
    p_demo.add_argument("--model", default=None, help=model_help)
    p_demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    p_demo.add_argument("--no-constraint", action="store_true",
                        help="let the policy write any text instead of legal steps only (an illegal line fails; "
                             "searches then sample at temperature 1 instead of 3)")
    p_demo.set_defaults(func=_cmd_demo)

    p_solve = sub.add_parser("solve", help="solve one Countdown problem, e.g. ponder solve 3 7 25 50 --target 175")
    p_solve.add_argument("numbers", type=_Int(1), nargs="+", metavar="number", help="2 to 8 positive ints")
    p_solve.add_argument("--target", type=_Int(1), required=True)
    p_solve.add_argument("--all-numbers", action="store_true", help="24-game rule: every number used exactly once")
    p_solve.add_argument("--algorithm", choices=("mcts", "beam_search", "best_of_n", "greedy"), default="mcts")
    p_solve.add_argument("--budget", type=_Int(1), default=64, help="MCTS expansions, beam width or N (default 64)")
    p_solve.add_argument("--seed", type=_Int(0), default=0)
    p_solve.add_argument("--model", default=None, help=model_help)
    p_solve.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_solve.add_argument("--no-constraint", action="store_true",
                         help="let the policy write any text instead of legal steps only")
    p_solve.set_defaults(func=_cmd_solve)

    p_train = sub.add_parser("train", help="train the Countdown policy + value model from scratch")
    p_train.add_argument("task", choices=("countdown",))
    p_train.add_argument("--out", required=True, help="output directory (config.json, model.safetensors, tokenizer.json)")
    p_train.add_argument("--steps", type=_Int(1), default=None, help="optimizer steps (default: the shipped recipe)")
    p_train.add_argument("--batch-size", type=_Int(1), default=None)
    p_train.add_argument("--seed", type=_Int(0), default=0)
    p_train.add_argument("--quick", action="store_true", help="a toy model in seconds (for tests)")
    p_train.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_train.set_defaults(func=_cmd_train)

    p_learn = sub.add_parser("learn", help="improve a Countdown model from its own searches (search, train, evaluate)")
    p_learn.add_argument("task", choices=("countdown",))
    p_learn.add_argument("--out", required=True, help="run directory: round-RRR/ per round, best/, learning.json "
                                                      "(an existing run resumes)")
    p_learn.add_argument("--model", default=None, help="starting " + model_help)
    p_learn.add_argument("--rounds", type=_Int(1), default=None, help="search-train rounds (default 6)")
    p_learn.add_argument("--problems", type=_Int(1), default=None, help="training problems searched per round "
                                                                          "(default 200)")
    p_learn.add_argument("--expansions", type=_Int(1), default=None, help="MCTS expansions per problem (default 32)")
    p_learn.add_argument("--steps", type=_Int(1), default=None, help="training steps per round (default 300)")
    p_learn.add_argument("--seed", type=_Int(0), default=0)
    p_learn.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_learn.set_defaults(func=_cmd_learn)

    p_serve = sub.add_parser("serve", help="OpenAI-compatible server that answers by searching (needs ponder[serve])",
                             description="Serve /v1/chat/completions, /v1/completions, /v1/models and /health; "
                                         "the request's `ponder` field picks the search algorithm and budget.")
    p_serve.add_argument("--model", default=None,
                         help="HF checkpoint directory, .gguf file or Countdown model directory "
                              "(default: the bundled Countdown model)")
    p_serve.add_argument("--prm", default=None, help="process reward model (checkpoint directory or .gguf) for "
                                                     "the 'prm' scorer, on its own KV cache")
    p_serve.add_argument("--prm-good", default="+", help="PRM token that means a good step (default '+')")
    p_serve.add_argument("--prm-bad", default="-", help="PRM token that means a bad step (default '-')")
    p_serve.add_argument("--prm-step-tag", default=None, help="text appended after each step before the PRM reads it")
    p_serve.add_argument("--algorithm", choices=("mcts", "beam_search", "best_of_n", "sample"), default=None,
                         help="search of a request that names none in its ponder field (default mcts; 'sample': "
                              "an ordinary endpoint)")
    p_serve.add_argument("--drop-unknown-chars", action="store_true",
                         help="character-level models: lower-case prompts and drop characters outside the "
                              "vocabulary instead of answering 400")
    p_serve.add_argument("--truncate-prompts", action="store_true",
                         help="keep the last 3/4 of the context of a longer prompt instead of answering 400")
    p_serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p_serve.add_argument("--port", type=_Int(1, 65535), default=8000, help="port (default 8000)")
    p_serve.add_argument("--max-kv-bytes", type=_kv_bytes, default=256 << 20,
                         help="KV cache size per model, e.g. 256M or 2G (default 256M)")
    p_serve.add_argument("--model-name", default=None, help="model id clients send (default: the model's "
                                                            "directory or file name; 'countdown' for the bundled one)")
    p_serve.add_argument("--threads", type=_Int(1), default=None, help="torch CPU threads (default: torch's choice)")
    p_serve.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info")
    p_serve.set_defaults(func=_cmd_serve)

    from ponder.distributed.command import RUN_HELP, add_arguments

    p_run = sub.add_parser("run", help=RUN_HELP)
    add_arguments(p_run, _Int)
    p_run.set_defaults(func=_cmd_run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command in ``argv`` (default: ``sys.argv[1:]``); returns its exit status (``solve``:
    1 when not solved). A usage error prints one line and raises ``SystemExit(2)``, as argparse does."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return USAGE_ERROR
    try:
        return args.func(args)
    except UsageError as err:
        _exit_usage(str(err))
    except KeyboardInterrupt:
        sys.stderr.write("ponder: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
