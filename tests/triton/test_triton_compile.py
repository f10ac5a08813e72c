"""The kernels compile for Hopper (sm_90a, through Triton's bundled ptxas) without a GPU.

The CPU interpreter checks the arithmetic but not what only the compiler checks (types carried
through loops and branches, dot shapes); this catches those in a GPU-less CI for the main
variants the launchers pick (bf16, D=128, page size 16).
"""

import os
import pathlib
import subprocess
import sys

import pytest

import ponder

triton = pytest.importorskip("triton")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

_ATTN = dict(GROUP=4, PAGE_SIZE=16, HEAD_DIM=128, BLOCK_D=128, DOT_PRECISION="tf32")
_SHARED_SIG = dict(
    q_ptr="*bf16", kv_ptr="*bf16", item_page_indptr_ptr="*i32", item_pages_ptr="*i32", item_num_tokens_ptr="*i32",
    item_query_indptr_ptr="*i32", item_queries_ptr="*i32", part_out_ptr="*fp32", part_lse_ptr="*fp32",
    item_offset="i32", num_heads="i32", stride_qt="i32", stride_qh="i32", k_base="i64", v_plane="i64",
    token_stride="i32", sm_scale_log2="fp32",
)  # fmt: skip
_PAGED_SIG = dict(
    q_ptr="*bf16", kv_ptr="*bf16", block_tables_ptr="*i32", seq_lens_ptr="*i32", query_indptr_ptr="*i32",
    out_ptr="*bf16", part_out_ptr="*fp32", part_lse_ptr="*fp32", num_seqs="i32", max_pages="i32", chunk_pages="i32",
    num_heads="i32", stride_qt="i32", stride_qh="i32", stride_ot="i32", stride_oh="i32", k_base="i64", v_plane="i64",
    token_stride="i32", sm_scale_log2="fp32",
)  # fmt: skip
CASES = [
    ("attention", "_shared_prefix_attention_kernel", _SHARED_SIG, dict(_ATTN, BLOCK_M=64, BLOCK_N=64, USE_DOT=True), 8),
    ("attention", "_paged_attention_kernel", _PAGED_SIG, dict(_ATTN, BLOCK_M=4, BLOCK_N=16, USE_DOT=False, SPLIT=True), 4),
    (
        "attention", "_merge_partials_kernel",
        dict(part_out_ptr="*fp32", part_lse_ptr="*fp32", merge_indptr_ptr="*i32", merge_slots_ptr="*i32",
             out_ptr="*bf16", num_heads="i32", slots_per_row="i32", stride_ot="i32", stride_oh="i32"),
        dict(HEAD_DIM=128, BLOCK_D=128, BLOCK_H=32, UNIFORM=False), 4,
    ),
    (
        "sampling", "_sample_kernel",
        dict(logits_ptr="*bf16", keys_ptr="*i64", temperature_ptr="*fp32", top_k_ptr="*i32", top_p_ptr="*fp32",
             tokens_ptr="*i64", logprobs_ptr="*fp32", V="i32", stride_row="i32"),
        dict(BLOCK_V=1024, NUM_PIVOTS=16), 8,
    ),
    (
        "value_score", "_value_score_kernel",
        dict(hidden_ptr="*bf16", rows_ptr="*i64", norm_weight_ptr="*bf16", direction_ptr="*fp32",
             parent_score_ptr="*fp32", depth_ptr="*i32", score_ptr="*fp32", path_score_ptr="*fp32", C="i32",
             stride_hidden="i32", eps="fp32", bias="fp32"),
        dict(HAS_NORM=True, MODE=3, BLOCK_C=1024), 4,
    ),
    (
        "kv", "_append_kv_kernel",
        dict(kv_ptr="*bf16", k_ptr="*bf16", v_ptr="*bf16", slot_mapping_ptr="*i64", k_plane="i64", v_plane="i64",
             token_elems="i32", stride_kt="i32", stride_vt="i32"),
        dict(BLOCK=1024), 4,
    ),
]  # fmt: skip


def _compile_all() -> None:
    """Compile every case (run in a fresh process: Triton must be imported without the
    interpreter, which the other tests here need)."""
    import importlib
    import warnings

    warnings.simplefilter("ignore")  # Triton's notice about its FP-fusion default
    for module, kernel, signature, constexprs, num_warps in CASES:
        fn = getattr(importlib.import_module(f"ponder.triton.{module}"), kernel)
        full = dict(signature, **{k: "constexpr" for k in constexprs})
        compiled = triton.compile(
            ASTSource(fn, full, constexprs=constexprs), target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps}
        )
        assert compiled.asm["cubin"] and f".entry {kernel}" in compiled.asm["ptx"], kernel
        print("compiled", kernel, flush=True)


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pathlib.Path(ponder.__file__).parents[1]), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert done.stdout.count("compiled") == len(CASES), done.stdout


if __name__ == "__main__":
    _compile_all()
