"""The demo's nine searches on this checkout against an earlier commit of ponder, on this machine,
one after the other, alternating which goes first from repeat to repeat.

The earlier commit (default ``c0dd487``, before the native hot path: the reference ops in a
Python loop) is exported with ``git archive`` into a scratch folder and its extension built with plain
CMake (CPU only, Release; about 20-60 s). Each side then runs in its own interpreter (this file
with ``--worker``): the current side imports the installed ``ponder``; the earlier side imports
the exported tree, with the editable install's import hook taken out of ``sys.meta_path``. Both
run the demo's 40 held-out problems on the bundled model with one torch thread
(``OMP_NUM_THREADS=1``, ``MKL_NUM_THREADS=1``, as ``ponder demo`` sets them), and print each
strategy's wall and process CPU time and each problem's answer, token count and score.

The two sides must give the same answers and token counts for every problem (the demo's table
at the same seeds), and scores equal to within 1e-5 relative: against c0dd487, 6 of the 40
scores of MCTS at 8 expansions (a root's float32 value sum over its visits) come out one or two
float32 ulps apart (about 1.2e-7) with the same trees' answers and tokens. The script exits
with an error if anything differs by more, and prints the largest score difference. It reports
per strategy the best wall / CPU time of each side and the ratio earlier / current (above 1:
the current code is faster).

    python benchmarks/bench_demo_vs_commit.py [--commit c0dd487] [--repeats 2] [--only mcts]
        [--workdir DIR]   # keep the exported tree and its build in DIR (reused when present)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _worker(path: str | None, only: str | None) -> None:
    if path:
        # An editable install puts an import hook for ``ponder`` ahead of sys.path; drop it so
        # the exported tree is the one imported.
        sys.meta_path[:] = [f for f in sys.meta_path
                            if not (type(f).__module__.startswith("_editable") and "ponder" in type(f).__module__)]
        sys.path.insert(0, path)
    import ponder  # noqa: F401  (before torch, as the CLI does)
    import torch

    from ponder.tasks import demo

    where = Path(ponder.__file__).resolve()
    if path and Path(path).resolve() not in where.parents:
        raise SystemExit(f"--worker: imported ponder from {where}, not from {path}")
    torch.set_num_threads(1)
    model, tok = demo.load_model()
    problems = demo.held_out_problems(40, 4, False)
    rows = []
    for s in demo.strategies():
        if only and only not in s.name:
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        out = demo.run_strategy(model, tok, problems, s)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rows.append(dict(strategy=f"{s.name} {s.label}", wall=wall, cpu=cpu, solved=out["solved"],
                         tokens_per_problem=out["tokens_per_problem"],
                         signature=[[r.answer, r.stats["tokens_generated"], r.score] for r in out["results"]]))
    print(json.dumps(dict(ponder=str(where), rows=rows)))


def _export(commit: str, workdir: Path) -> Path:
    """``git archive`` the commit into workdir/src and build its extension; returns workdir/src/python."""
    src = workdir / "src"
    python_dir = src / "python"
    if not any((python_dir / "ponder").glob("_core*.so")):
        if src.exists():
            shutil.rmtree(src)
        src.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        import pybind11

        build = workdir / "build"
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        subprocess.run(["cmake", "-S", str(src), "-B", str(build), *gen, "-DCMAKE_BUILD_TYPE=Release",
                        "-DPONDER_CUDA=OFF", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
                        f"-DPython_EXECUTABLE={sys.executable}"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", str(build), "--target", "_core"], check=True, stdout=subprocess.DEVNULL)
        if not any((python_dir / "ponder").glob("_core*.so")):
            built = sorted(build.rglob("_core*.so"))
            if not built:
                raise SystemExit(f"building {commit}: no _core extension was produced under {build}")
            shutil.copy2(built[0], python_dir / "ponder")
    return python_dir


def _compare(strategy: str, old, new, commit: str) -> float:
    """Check one strategy's results on both sides; returns the largest score difference."""
    (solved_o, tpp_o, sig_o), (solved_n, tpp_n, sig_n) = old, new
    if (solved_o, tpp_o, len(sig_o)) != (solved_n, tpp_n, len(sig_n)):
        raise SystemExit(f"{strategy}: solved / tokens per problem differ: {commit} {solved_o} / {tpp_o}, "
                         f"now {solved_n} / {tpp_n}")
    worst = 0.0
    for i, ((ans_o, tok_o, score_o), (ans_n, tok_n, score_n)) in enumerate(zip(sig_o, sig_n)):
        if (ans_o, tok_o) != (ans_n, tok_n):
            raise SystemExit(f"{strategy}, problem {i}: {commit} answered {ans_o!r} in {tok_o} tokens, "
                             f"now {ans_n!r} in {tok_n}")
        if (score_o is None) != (score_n is None):
            raise SystemExit(f"{strategy}, problem {i}: score {score_o} on {commit}, {score_n} now")
        if score_o is not None:
            diff = abs(score_o - score_n)
            if diff > 1e-5 * max(1.0, abs(score_o)):
                raise SystemExit(f"{strategy}, problem {i}: score {score_o} on {commit}, {score_n} now")
            worst = max(worst, diff)
    return worst


def _run_side(path: str | None, only: str | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--worker"] + (["--path", path] if path else [])
    cmd += ["--only", only] if only else []
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker {'for ' + path if path else '(current)'} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commit", default="c0dd487", help="the earlier commit to compare with (default: c0dd487)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating which goes first")
    ap.add_argument("--only", default=None, help="run only strategies whose name contains this (e.g. mcts)")
    ap.add_argument("--workdir", default=None, help="keep the exported tree and its build here (reused)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--path", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args.path, args.only)
        return
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")

    scratch = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        scratch = tempfile.TemporaryDirectory(prefix="ponder-demo-vs-")
        workdir = Path(scratch.name)
    try:
        t0 = time.perf_counter()
        old_path = str(_export(args.commit, workdir))
        print(f"{args.commit} exported and built in {time.perf_counter() - t0:.0f} s; one torch thread per side, "
              f"best of {args.repeats}", flush=True)
        best: dict = {"old": {}, "new": {}}
        sigs: dict = {"old": {}, "new": {}}
        for rep in range(args.repeats):
            for side in (("old", "new") if rep % 2 == 0 else ("new", "old")):
                out = _run_side(old_path if side == "old" else None, args.only)
                for row in out["rows"]:
                    k = row["strategy"]
                    if k not in best[side] or row["wall"] < best[side][k][0]:
                        best[side][k] = (row["wall"], row["cpu"])
                    sigs[side][k] = (row["solved"], row["tokens_per_problem"], row["signature"])
        if sigs["old"].keys() != sigs["new"].keys():
            raise SystemExit(f"the two sides ran different strategies: {sorted(sigs['old'])} vs {sorted(sigs['new'])}")
        print(f"{'strategy':<26} {'solved':>7} {'tokens/problem':>14} {args.commit + ' wall/CPU s':>20} "
              f"{'current wall/CPU s':>19} {'ratio':>7}")
        tot = {"old": [0.0, 0.0], "new": [0.0, 0.0]}
        worst = 0.0
        for k in sigs["new"]:
            worst = max(worst, _compare(k, sigs["old"][k], sigs["new"][k], args.commit))
            (wo, co), (wn, cn) = best["old"][k], best["new"][k]
            for side, (w, c) in (("old", (wo, co)), ("new", (wn, cn))):
                tot[side][0] += w
                tot[side][1] += c
            solved, tpp, _ = sigs["new"][k]
            print(f"{k:<26} {solved:>7.1%} {tpp:>14.1f} {wo:>10.2f}/{co:<9.2f} {wn:>9.2f}/{cn:<9.2f} {wo / wn:>6.2f}x")
        (wo, co), (wn, cn) = tot["old"], tot["new"]
        print(f"{'all':<26} {'':>7} {'':>14} {wo:>10.2f}/{co:<9.2f} {wn:>9.2f}/{cn:<9.2f} {wo / wn:>6.2f}x")
        print(f"same answers and token counts for every problem; largest score difference {worst:.2e}")
    finally:
        if scratch is not None:
            scratch.cleanup()


if __name__ == "__main__":
    main()
