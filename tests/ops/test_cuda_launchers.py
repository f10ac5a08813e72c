"""Argument checks of the CUDA launchers in ``ponder._core`` (built whenever nvcc is found). They
run before anything touches a device, so they are tested on any machine with such a build."""

import pytest

try:
    from ponder import _core
except ImportError:  # pragma: no cover - the extension is part of every install
    _core = None

pytestmark = pytest.mark.skipif(
    _core is None or not getattr(_core, "CUDA_BUILT", False), reason="ponder was built without its CUDA kernels"
)


def _spa(**overrides):
    args = dict(q=1, kv=1, dtype=1, k_base=0, v_plane=64, item_page_indptr=1, item_pages=1, item_num_tokens=1,
                item_query_indptr=1, item_queries=1, first_item=0, last_item=0, part_out=1, part_lse=1, num_heads=4,
                num_kv_heads=2, head_dim=64, page_size=16, scale=0.125, stream=0)  # fmt: skip
    args.update(overrides)
    return _core.shared_prefix_attention_cuda(**args)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(dtype=3), "dtype must be 0 \\(float32\\), 1 \\(bfloat16\\) or 2 \\(float16\\), got 3"),
        (dict(head_dim=0), "head_dim must be in \\[1, 256\\], got 0"),
        (dict(head_dim=257), "head_dim must be in \\[1, 256\\], got 257"),
        (dict(num_kv_heads=0), "num_kv_heads must be in \\[1, 65535\\], got 0"),
        (dict(num_heads=5), "num_heads \\(5\\) must be a multiple of num_kv_heads \\(2\\)"),
        (dict(page_size=0), "page_size must be >= 1, got 0"),
        (dict(first_item=3, last_item=2), "0 <= first_item <= last_item"),
        (dict(first_item=-1), "0 <= first_item <= last_item"),
        (dict(last_item=1, q=0), "null device pointer"),
    ],
)
def test_shared_prefix_attention_launcher_refuses(overrides, match):
    with pytest.raises(ValueError, match=match):
        _spa(**overrides)


def test_empty_launches_do_nothing():
    # no items / no queries / no rows: nothing is launched, so no device is needed
    assert _spa() is None
    assert _core.merge_partials_cuda(0, 0, 0, 0, 0, num_queries=0, num_heads=2, head_dim=8, stream=0) is None
    assert _core.value_score_cuda(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, hidden_size=8, stride_hidden=8, eps=0.0, bias=0.0,
                                  mode=0, stream=0) is None  # fmt: skip


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(num_queries=-1), "num_queries must be in \\[0, 2\\^31\\), got -1"),
        (dict(num_heads=0), "num_heads and head_dim must be >= 1"),
        (dict(num_queries=2, out=0), "null device pointer"),
    ],
)
def test_merge_launcher_refuses(overrides, match):
    args = dict(part_out=1, part_lse=1, merge_indptr=1, merge_slots=1, out=1, num_queries=0, num_heads=2, head_dim=8,
                stream=0)  # fmt: skip
    args.update(overrides)
    with pytest.raises(ValueError, match=match):
        _core.merge_partials_cuda(**args)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(dtype=-1), "dtype must be 0 \\(float32\\), 1 \\(bfloat16\\) or 2 \\(float16\\), got -1"),
        (dict(mode=4), "mode must be 0 \\(last\\), 1 \\(min\\), 2 \\(prod\\) or 3 \\(mean\\), got 4"),
        (dict(num_rows=-2), "num_rows must be in \\[0, 2\\^31\\), got -2"),
        (dict(hidden_size=0), "hidden_size must be >= 1, got 0"),
        (dict(stride_hidden=7), "stride_hidden \\(7\\) must be >= hidden_size \\(8\\)"),
        (dict(num_rows=3, direction=0), "null device pointer"),
    ],
)
def test_value_score_launcher_refuses(overrides, match):
    args = dict(hidden=1, dtype=0, rows=1, num_rows=0, norm_weight=0, direction=1, parent_score=1, depth=1, score=1,
                path_score=1, hidden_size=8, stride_hidden=8, eps=1e-5, bias=0.0, mode=0, stream=0)  # fmt: skip
    args.update(overrides)
    with pytest.raises(ValueError, match=match):
        _core.value_score_cuda(**args)
