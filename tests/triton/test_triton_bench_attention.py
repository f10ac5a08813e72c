"""The attention benchmark's CPU dry run: its correctness part must run without a GPU."""

import os
import pathlib
import subprocess
import sys

import pytest
import torch

import ponder

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "bench_attention.py"


@pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="the dry run stands in for the GPU benchmark where there is no GPU; on a GPU, benchmarks/gpu_check.sh "
    "runs bench_attention.py itself, whose every configuration is checked against the reference",
)
def test_bench_attention_dry_run_agrees_with_reference():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pathlib.Path(ponder.__file__).parents[1]), env.get("PYTHONPATH")]))
    env.pop("TRITON_INTERPRET", None)  # the script sets it itself before importing Triton
    done = subprocess.run([sys.executable, str(BENCH), "--dry-run"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("agree with the reference") == 2, done.stdout
