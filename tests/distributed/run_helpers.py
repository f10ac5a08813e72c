"""Shared pieces of the distributed tests: a small Countdown run and record comparison."""

import json

from ponder.distributed import RunSpec
from ponder.distributed.command import countdown_problems

# 4 MCTS expansions on 8 problems: each record is a real search, the whole run a few seconds.
SPEC = RunSpec(task="countdown", algorithm="mcts", budget=4, seed=3, batch_size=2)
PROBLEMS = countdown_problems(8, seed=5)


def read_records(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def comparable(records):
    """id -> the record without the figures that depend on how problems were batched."""
    out = {}
    for r in records:
        r = dict(r)
        r["stats"] = {k: v for k, v in r["stats"].items() if not k.startswith("batch")}
        out[r["id"]] = r
    return out
