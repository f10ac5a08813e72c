import math

import pytest
import torch

import ponder.ops as ops

transformers_llama = pytest.importorskip("transformers.models.llama.modeling_llama")

HEAD_DIM = 24  # not a power of two
ROPE = {
    "default": (10000.0, None),
    "linear": (10000.0, {"rope_type": "linear", "factor": 4.0}),
    "llama3": (
        500000.0,
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 64},
    ),
}


def _hf_rotary(theta, scaling, max_pos):
    params = dict(scaling or {"rope_type": "default"}, rope_theta=theta)
    cfg = transformers_llama.LlamaConfig(
        hidden_size=HEAD_DIM * 4, num_attention_heads=4, num_key_value_heads=2, head_dim=HEAD_DIM,
        max_position_embeddings=max_pos, rope_parameters=params,
    )
    return transformers_llama.LlamaRotaryEmbedding(cfg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", list(ROPE))
def test_rotary_matches_transformers(kind, dtype):
    theta, scaling = ROPE[kind]
    max_pos = 4096
    g = torch.Generator().manual_seed(0)
    T, H, Hk = 9, 4, 2
    positions = torch.tensor([0, 1, 2, 63, 64, 100, 511, 2048, 4095])
    q = torch.randn(T, H, HEAD_DIM, generator=g).to(dtype)
    k = torch.randn(T, Hk, HEAD_DIM, generator=g).to(dtype)
    cos, sin = _hf_rotary(theta, scaling, max_pos)(q, positions[None])  # [1, T, D] each
    q_hf, k_hf = transformers_llama.apply_rotary_pos_emb(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin
    )  # [1, heads, T, D]
    q_rot, k_rot = ops.rotary(q, k, positions, ops.rope_cache(HEAD_DIM, max_pos, theta, scaling))
    assert q_rot.dtype == dtype and k_rot.shape == k.shape
    # rope_cache reproduces transformers' frequencies and angles with the same fp32 operations
    # and rotary applies them in the same dtype and order, so results agree bit for bit
    torch.testing.assert_close(q_rot, q_hf[0].transpose(0, 1), atol=0, rtol=0)
    torch.testing.assert_close(k_rot, k_hf[0].transpose(0, 1), atol=0, rtol=0)


def test_rope_cache_literal():
    cs = ops.rope_cache(4, 3, 10000.0)
    # frequencies 1 and 10000**-0.5 = 0.01; row 2 holds angles 2 and 0.02
    expected = torch.tensor([math.cos(2), math.cos(0.02), math.sin(2), math.sin(0.02)])
    torch.testing.assert_close(cs[2], expected, atol=1e-6, rtol=1e-6)  # fp32 cos/sin rounding
    assert cs.shape == (3, 4) and cs.dtype == torch.float32
    assert torch.equal(cs[0], torch.tensor([1.0, 1.0, 0.0, 0.0]))


def test_rope_cache_accepts_legacy_type_key_and_rope_parameters_dict():
    a = ops.rope_cache(8, 16, 10000.0, {"type": "linear", "factor": 2.0})
    b = ops.rope_cache(8, 16, 10000.0, {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    c = ops.rope_cache(8, 32, 10000.0)
    assert torch.equal(a, b)
    # linear scaling by 2 = positions halved
    torch.testing.assert_close(a[4], c[2], atol=0, rtol=0)


def test_rotary_is_a_rotation():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(5, 3, 8, generator=g, dtype=torch.float64).float()
    k = torch.randn(5, 1, 8, generator=g)
    positions = torch.tensor([0, 3, 3, 7, 1])
    q_rot, k_rot = ops.rotary(q, k, positions, ops.rope_cache(8, 8, 10000.0))
    assert torch.equal(q_rot[0], q[0])  # position 0 is the identity
    # each (x_i, x_{i+D/2}) pair keeps its length; fp32 rounding of a 2-term sum
    pair_norm = lambda x: x[..., :4] ** 2 + x[..., 4:] ** 2  # noqa: E731
    torch.testing.assert_close(pair_norm(q_rot), pair_norm(q), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pair_norm(k_rot), pair_norm(k), atol=1e-5, rtol=1e-5)


def test_rotary_opcheck():
    args = (torch.randn(4, 3, 8), torch.randn(4, 1, 8), torch.tensor([0, 5, 2, 9]), ops.rope_cache(8, 10, 10000.0), "torch")
    torch.library.opcheck(torch.ops.ponder.rotary.default, args)


@pytest.mark.parametrize(
    "scaling,match",
    [
        ({"rope_type": "dynamic", "factor": 2.0}, "'dynamic' is not supported"),
        ({"rope_type": "yarn", "factor": 2.0}, "'yarn' is not supported"),
        ({"rope_type": "linear"}, "needs the parameter 'factor'"),
        ({"rope_type": "linear", "factor": 0}, "must be a positive number"),
        ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
         "original_max_position_embeddings"),
        ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
          "original_max_position_embeddings": 64}, "must exceed"),
        ({"rope_type": "default", "rope_theta": 500000.0}, "disagrees with theta"),
        ({"rope_type": "default", "partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ],
)
def test_rope_cache_refuses_unsupported_scaling(scaling, match):
    with pytest.raises(ValueError, match=match):
        ops.rope_cache(8, 16, 10000.0, scaling)


@pytest.mark.parametrize(
    "args,exc,match",
    [
        ((7, 16, 10000.0), ValueError, "head_dim must be a positive even int"),
        ((8, 0, 10000.0), ValueError, "max_pos must be a positive int"),
        ((8, 16, 1.0), ValueError, "theta must be"),
        ((8, 16, 10000.0, "llama3"), TypeError, "scaling must be None or a dict"),
    ],
)
def test_rope_cache_bad_arguments(args, exc, match):
    with pytest.raises(exc, match=match):
        ops.rope_cache(*args)


def _rot_args(**over):
    args = dict(q=torch.randn(3, 4, 8), k=torch.randn(3, 2, 8), positions=torch.tensor([0, 1, 9]),
                cos_sin=ops.rope_cache(8, 10, 10000.0))
    args.update(over)
    return args


@pytest.mark.parametrize(
    "over,exc,match",
    [
        (dict(positions=torch.tensor([0, 1, 10])), IndexError, r"positions must lie in \[0, 10\)"),
        (dict(positions=torch.tensor([0, -1, 2])), IndexError, r"positions must lie in \[0, 10\)"),
        (dict(positions=torch.tensor([0, 1, 2], dtype=torch.int32)), TypeError, "positions must be a 1-D int64"),
        (dict(positions=torch.tensor([0, 1])), ValueError, "positions has size 2"),
        (dict(k=torch.randn(2, 2, 8)), ValueError, "k has size 2 in dimension 0"),
        (dict(k=torch.randn(3, 2, 6)), ValueError, "D, q's head dim"),
        (dict(k=torch.randn(3, 2, 8).bfloat16()), TypeError, "must match"),
        (dict(q=torch.randn(3, 4, 7), k=torch.randn(3, 2, 7)), ValueError, "must be even"),
        (dict(cos_sin=ops.rope_cache(8, 10, 10000.0).double()), TypeError, r"cos_sin must be a \[max_pos, D\] float32"),
        (dict(cos_sin=ops.rope_cache(6, 10, 10000.0)), ValueError, "cos_sin has size 6"),
    ],
)
def test_rotary_bad_input(over, exc, match):
    with pytest.raises(exc, match=match):
        ops.rotary(**_rot_args(**over))
    ops.rotary(**_rot_args())
