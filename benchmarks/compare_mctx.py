"""ponder's Forest vs DeepMind's mctx (JAX, CPU) on the same-sized batched MCTS workload.

What matches: the number of trees (batch), simulations per tree, branching factor (actions),
c_puct (pb_c_init, with mctx's log term made negligible by a huge pb_c_base), single-agent
values, and a deterministic hash model for priors and values. What does not: mctx runs one
simulation per tree per step (no virtual loss), normalises Q by the tree's min/max and reuses
its model inside the jitted loop; ponder selects up to 8 leaves per tree per call with virtual
loss and evaluates the model (numpy) between calls. So the trees differ; the comparison is
throughput on the same amount of search. Both timings are end to end (model included); mctx
is timed after jit compilation (reported separately), best of 3 runs.

    python benchmarks/compare_mctx.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forest import C_PUCT, FULL, QUICK, Workload, _Ponder, search  # noqa: E402


def _hash32(jnp, x):
    """A uint32 avalanche mix (murmur3 finaliser)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def make_mctx_search(w: Workload):
    import jax
    import jax.numpy as jnp
    import mctx

    actions = jnp.arange(w.branching, dtype=jnp.uint32)

    def model(embedding):
        """prior logits [B, A] and values [B] from a node's uint32 key."""
        u = _hash32(jnp, embedding[:, None] * jnp.uint32(31) + actions[None, :] + jnp.uint32(1))
        priors = u.astype(jnp.float32) / 4294967296.0 + 0.01
        v = _hash32(jnp, embedding ^ jnp.uint32(0x9E3779B9)).astype(jnp.float32) / 4294967296.0
        return jnp.log(priors), 2.0 * v - 1.0

    def recurrent_fn(params, rng_key, action, embedding):
        child = _hash32(jnp, embedding * jnp.uint32(0x01000193) + action.astype(jnp.uint32) + jnp.uint32(7))
        logits, value = model(child)
        zeros = jnp.zeros_like(value)
        return mctx.RecurrentFnOutput(reward=zeros, discount=jnp.ones_like(value), prior_logits=logits,
                                      value=value), child

    @jax.jit
    def run(rng_key):
        root_key = _hash32(jnp, jnp.arange(w.num_trees, dtype=jnp.uint32) + jnp.uint32(12345))
        logits, value = model(root_key)
        root = mctx.RootFnOutput(prior_logits=logits, value=value, embedding=root_key)
        return mctx.muzero_policy(params=(), rng_key=rng_key, root=root, recurrent_fn=recurrent_fn,
                                  num_simulations=w.num_simulations, dirichlet_fraction=0.0,
                                  pb_c_init=C_PUCT, pb_c_base=1e12)

    return run, jax


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64 trees x 50 simulations instead of 256 x 200")
    args = ap.parse_args(argv)
    w = QUICK if args.quick else FULL
    try:
        run, jax = make_mctx_search(w)
    except ImportError as e:
        print(f"compare_mctx: skipped, jax/mctx not importable ({e}); install jax and mctx to run it")
        return

    key = jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    out = run(key)
    out.action.block_until_ready()
    compile_s = time.perf_counter() - t0
    visits = out.search_tree.summary().visit_counts  # [B, A]
    assert int(visits.sum()) == w.num_trees * w.num_simulations, int(visits.sum())
    mctx_s = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        run(key).action.block_until_ready()
        mctx_s = min(mctx_s, time.perf_counter() - t0)

    ponder_s, ops_s = float("inf"), float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        impl, ops, sims, _ = search(_Ponder, w)
        ponder_s, ops_s = min(ponder_s, time.perf_counter() - t0), min(ops_s, ops)
    assert sims == w.num_trees * w.num_simulations
    assert impl.f.visits[impl.roots].tolist() == [w.num_simulations] * w.num_trees

    sims = w.num_trees * w.num_simulations
    print(f"mctx comparison: {w.num_trees} trees x {w.num_simulations} simulations, branching {w.branching} "
          f"(same counts; trees differ: see the module docstring)")
    print(f"  mctx    {mctx_s * 1e3:9.1f} ms {sims / mctx_s:12,.0f} sim/s  (jit compile {compile_s:.1f} s, not counted)")
    print(f"  ponder  {ponder_s * 1e3:9.1f} ms {sims / ponder_s:12,.0f} sim/s  (tree ops {ops_s * 1e3:.1f} ms, "
          f"the rest numpy model + bookkeeping)")
    print(f"  ratio   {mctx_s / ponder_s:.1f}x end to end, {mctx_s / ops_s:.1f}x on tree ops (target: ponder faster)")


if __name__ == "__main__":
    main()
