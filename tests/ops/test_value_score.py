import math

import pytest
import torch

import ponder.ops as ops


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_value_score_literal_value_head():
    hidden = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, -1.0], [3.0, 3.0, 3.0]])
    rows = torch.tensor([2, 1])
    direction = torch.tensor([1.0, 0.5, 0.0])
    parent = torch.tensor([0.5, 0.9])
    depth = torch.tensor([3, 1], dtype=torch.int32)
    score, path = ops.value_score(hidden, rows, None, 0.0, direction, -1.0, parent, depth, "mean")
    expected = [_sig(3 + 1.5 - 1), _sig(1.0 - 1)]
    assert score.tolist() == pytest.approx(expected, abs=1e-6)
    assert path.tolist() == pytest.approx([(0.5 * 2 + expected[0]) / 3, expected[1]], abs=1e-6)


@pytest.mark.parametrize(
    "mode,expected",
    [("last", [0.8, 0.4]), ("min", [0.5, 0.4]), ("prod", [0.4, 0.4]), ("mean", [(0.5 + 0.8) / 2, 0.4])],
)
def test_value_score_aggregation_modes(mode, expected):
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    hidden = torch.tensor([[logit(0.8)], [logit(0.4)]])
    rows = torch.tensor([0, 1])
    score, path = ops.value_score(
        hidden, rows, None, 0.0, torch.tensor([1.0]), 0.0, torch.tensor([0.5, 0.9]), torch.tensor([2, 1], dtype=torch.int32), mode
    )
    assert score.tolist() == pytest.approx([0.8, 0.4], abs=1e-6)
    assert path.tolist() == pytest.approx(expected, abs=1e-6)


def test_value_score_norm_matches_rms_norm_then_dot():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 16, generator=g).to(torch.bfloat16)
    weight = torch.rand(16, generator=g).to(torch.bfloat16)
    direction = torch.randn(16, generator=g)
    rows = torch.tensor([5, 0, 3])
    depth = torch.ones(3, dtype=torch.int32)
    score, path = ops.value_score(hidden, rows, weight, 1e-5, direction, 0.0, torch.zeros(3), depth, "prod")
    # the dot as value_score defines it: a per-row product and sum (a matrix-vector product may
    # split the sum differently)
    expected = torch.sigmoid((ops.rms_norm(hidden[rows], weight, 1e-5).float() * direction).sum(-1))
    assert torch.equal(score, expected) and torch.equal(path, expected)  # depth 1 ignores the parent


def test_value_score_empty():
    score, path = ops.value_score(
        torch.zeros(3, 4), torch.zeros(0, dtype=torch.int64), None, 0.0, torch.zeros(4), 0.0,
        torch.zeros(0), torch.zeros(0, dtype=torch.int32), "min",
    )  # fmt: skip
    assert score.shape == (0,) and path.shape == (0,)


def test_value_score_opcheck():
    g = torch.Generator().manual_seed(1)
    args = (
        torch.randn(5, 8, generator=g), torch.tensor([4, 0]), torch.rand(8, generator=g), 1e-6,
        torch.randn(8, generator=g), 0.1, torch.rand(2, generator=g), torch.tensor([2, 3], dtype=torch.int32),
        "mean", "torch",
    )  # fmt: skip
    torch.library.opcheck(torch.ops.ponder.value_score.default, args)


def _good_args():
    return dict(
        hidden=torch.zeros(4, 8), rows=torch.tensor([0, 3]), norm_weight=None, eps=1e-6, direction=torch.zeros(8),
        bias=0.0, parent_score=torch.zeros(2), depth=torch.ones(2, dtype=torch.int32), mode="last",
    )  # fmt: skip


@pytest.mark.parametrize(
    "change,exc,match",
    [
        ({"rows": torch.tensor([0, 4])}, IndexError, r"rows must lie in \[0, 4\)"),
        ({"rows": torch.tensor([0, 1], dtype=torch.int32)}, TypeError, "rows must be a"),
        ({"direction": torch.zeros(7)}, ValueError, "direction has size 7"),
        ({"norm_weight": torch.zeros(9)}, ValueError, "norm_weight has size 9"),
        ({"parent_score": torch.zeros(3)}, ValueError, "parent_score has size 3"),
        ({"depth": torch.zeros(2, dtype=torch.int32)}, ValueError, "depth must be >= 1"),
        ({"depth": torch.ones(2)}, TypeError, "depth must be a"),
        ({"mode": "median"}, ValueError, "mode must be one of"),
        ({"eps": -1.0}, ValueError, "eps must be a non-negative"),
        ({"bias": "0"}, TypeError, "bias must be a float"),
        ({"hidden": torch.zeros(4, 8, dtype=torch.int64)}, TypeError, "hidden must be a"),
    ],
)
def test_value_score_bad_input(change, exc, match):
    args = _good_args()
    args.update(change)
    with pytest.raises(exc, match=match):
        ops.value_score(**args)


@pytest.mark.gpu
def test_value_score_cuda_torch_backend_matches_cpu():
    g = torch.Generator().manual_seed(2)
    hidden, direction = torch.randn(7, 64, generator=g), torch.randn(64, generator=g)
    rows, depth = torch.tensor([6, 2, 2]), torch.tensor([1, 2, 5], dtype=torch.int32)
    parent = torch.rand(3, generator=g)
    cpu = ops.value_score(hidden, rows, None, 0.0, direction, 0.3, parent, depth, "min")
    gpu = ops.value_score(hidden.cuda(), rows.cuda(), None, 0.0, direction.cuda(), 0.3, parent.cuda(), depth.cuda(), "min",
                          backend="torch")  # fmt: skip
    # the same fp32 math on two devices; matmul reduction order may differ by an ulp
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(gpu[1].cpu(), cpu[1], atol=1e-6, rtol=1e-6)
