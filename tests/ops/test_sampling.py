import math

import pytest
import torch

import ponder.ops as ops
from ponder.ops import reference

M32 = 0xFFFFFFFF


# ---- a pure-Python integer model of the sampling hash (the definition Triton / CUDA follow) ----
def py_fmix32(h):
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M32
    return h ^ (h >> 16)


def py_row_hash(key):
    h = 0x9E3779B9
    for x in key:
        x &= (1 << 64) - 1  # two's complement of negative int64
        h = py_fmix32(h ^ (x & M32))
        h = py_fmix32(h ^ (x >> 32))
    return h


def py_uniform(key, v):
    bits = py_fmix32(py_row_hash(key) ^ py_fmix32((v + 0x632BE5AB) & M32))
    return ((bits >> 8) | 1) / 2**24


def _params(B, temperature=1.0, top_k=0, top_p=1.0):
    return (
        torch.full((B,), temperature, dtype=torch.float32),
        torch.full((B,), top_k, dtype=torch.int32),
        torch.full((B,), top_p, dtype=torch.float32),
    )


def _keys(B, seed=7, node0=0):
    keys = torch.zeros(B, 4, dtype=torch.int64)
    keys[:, 0] = seed
    keys[:, 1] = torch.arange(node0, node0 + B)
    keys[:, 2] = 3
    keys[:, 3] = 11
    return keys


KEYS = [(0, 0, 0, 0), (1, 2, 3, 4), (2**40 + 5, 123456789, 7, 2**33 + 1), (-1, -(2**63), 2**63 - 1, 0)]


def test_uniforms_match_the_integer_definition():
    keys = torch.tensor(KEYS, dtype=torch.int64)
    vocab = 70000
    u = reference.sampling_uniforms(keys, vocab)
    for b, key in enumerate(KEYS):
        for v in (0, 1, 2, 255, 65535, 65536, vocab - 1):
            assert float(u[b, v]) == py_uniform(key, v), (key, v)


def test_uniforms_golden_values():
    # literal values pin the definition: a change here changes every sampled token of every run
    bits = [py_fmix32(py_row_hash(k) ^ py_fmix32((v + 0x632BE5AB) & M32)) for k in KEYS[:2] for v in (0, 1)]
    assert bits == [0xB28C1B4E, 0x215315E2, 0xEE925D73, 0x73E1E423]
    assert py_fmix32(1) == 0x514E28B7  # MurmurHash3 fmix32 reference value
    u = reference.sampling_uniforms(torch.tensor(KEYS[:2]), 2).flatten().tolist()
    assert u == [((b >> 8) | 1) / 2**24 for b in bits]


def test_uniforms_are_odd_multiples_inside_the_unit_interval_and_uniform():
    u = reference.sampling_uniforms(_keys(64), 4096).double()
    assert (u > 0).all() and (u < 1).all()
    assert ((u * 2**24) % 2 == 1).all()
    # 262144 draws in 32 bins: chi-square with 31 degrees of freedom; the key set is fixed, so
    # the test is deterministic, and p > 1e-4 fails a correct hash for 1 key set in 10**4
    counts = torch.bincount((u * 32).long().flatten(), minlength=32).double()
    expected = u.numel() / 32
    stat = float(((counts - expected) ** 2 / expected).sum())
    assert float(torch.special.gammaincc(torch.tensor(31 / 2), torch.tensor(stat / 2))) > 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_is_argmax_with_ties_to_lowest_id(dtype):
    logits = torch.tensor([[0.0, 2.0, 1.0, 2.0], [5.0, 5.0, 5.0, 5.0], [-1.0, -3.0, -0.5, -0.5]]).to(dtype)
    tokens, logprobs = ops.sample(logits, _keys(3), *_params(3, temperature=0.0))
    assert tokens.tolist() == [1, 0, 2]
    assert tokens.dtype == torch.int64 and logprobs.dtype == torch.float32
    torch.testing.assert_close(logprobs, torch.log_softmax(logits.float(), -1)[[0, 1, 2], [1, 0, 2]], atol=0, rtol=0)


def test_top_k_one_is_greedy_at_any_temperature():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 300, generator=g)
    logits[0, [5, 9]] = 10.0  # a tie: greedy and top_k=1 both take token 5
    greedy, _ = ops.sample(logits, _keys(40), *_params(40, temperature=0.0))
    top1, _ = ops.sample(logits, _keys(40), *_params(40, temperature=1.5, top_k=1))
    assert torch.equal(top1, greedy)
    assert int(top1[0]) == 5


def test_logprob_is_raw_log_softmax_at_the_token():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(32, 50, generator=g) * 2
    temperature, top_k, top_p = _params(32, temperature=0.6, top_k=10, top_p=0.8)
    tokens, logprobs = ops.sample(logits, _keys(32), temperature, top_k, top_p)
    expected = torch.log_softmax(logits, -1).gather(1, tokens[:, None]).squeeze(1)
    torch.testing.assert_close(logprobs, expected, atol=0, rtol=0)


def test_row_draw_independent_of_batch_composition():
    g = torch.Generator().manual_seed(2)
    B, V = 24, 500
    logits = torch.randn(B, V, generator=g) * 3
    keys = torch.randint(-(2**62), 2**62, (B, 4), generator=g)
    temperature = torch.rand(B, generator=g) * 1.5
    temperature[::5] = 0.0
    top_k = torch.randint(0, 40, (B,), generator=g, dtype=torch.int32)
    top_p = torch.where(torch.rand(B, generator=g) < 0.5, torch.rand(B, generator=g) * 0.9 + 0.05, torch.ones(B))
    full, full_lp = ops.sample(logits, keys, temperature, top_k, top_p)
    perm = torch.randperm(B, generator=g)
    shuffled, shuffled_lp = ops.sample(logits[perm], keys[perm], temperature[perm], top_k[perm], top_p[perm])
    assert torch.equal(shuffled, full[perm])
    assert torch.equal(shuffled_lp, full_lp[perm])
    for b in range(0, B, 5):
        alone, _ = ops.sample(logits[b : b + 1], keys[b : b + 1], temperature[b : b + 1], top_k[b : b + 1], top_p[b : b + 1])
        assert int(alone) == int(full[b])
    # and a different key does change draws (the key is really used)
    other, _ = ops.sample(logits, keys + 1, temperature, top_k, top_p)
    assert not torch.equal(other, full)


def naive_allowed(row, temperature, k, p):
    """The allowed set of one row, from Python sorting."""
    z = row.double().tolist()
    V = len(z)
    allowed = set(range(V))
    if 0 < k < V:
        kth = sorted(z, reverse=True)[k - 1]
        allowed = {v for v in allowed if z[v] >= kth}
    if p < 1.0:
        m = max(z[v] / temperature for v in allowed)
        w = {v: math.exp(z[v] / temperature - m) for v in allowed}
        total = sum(w.values())
        probs = sorted((w[v] / total for v in allowed), reverse=True)
        mass, kept = 0.0, []
        for q in probs:
            if kept and mass >= p:
                break
            kept.append(q)
            mass += q
        allowed = {v for v in allowed if w[v] / total >= kept[-1]}
    return allowed


def naive_sample(row, key, temperature, k, p):
    """Per-row, per-token Gumbel-max with uniforms from the integer model."""
    if temperature == 0 or k == 1:
        return int(row.float().argmax())
    best, best_v = -math.inf, None
    z = row.float()
    for v in sorted(naive_allowed(row, temperature, k, p)):
        g = -torch.log(-torch.log(torch.tensor(py_uniform(key, v), dtype=torch.float32)))
        score = float(z[v] / torch.tensor(temperature, dtype=torch.float32) + g)
        if score > best:
            best, best_v = score, v
    return best_v


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sample_matches_naive_oracle(dtype):
    g = torch.Generator().manual_seed(3)
    B, V = 30, 37  # odd vocabulary size
    logits = (torch.randn(B, V, generator=g) * 2).to(dtype)
    keys = torch.randint(0, 2**40, (B, 4), generator=g)
    settings = [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.6), (0.5, 12, 0.9), (0.0, 3, 0.5), (2.0, 1, 1.0)]
    temperature = torch.tensor([settings[b % 6][0] for b in range(B)], dtype=torch.float32)
    top_k = torch.tensor([settings[b % 6][1] for b in range(B)], dtype=torch.int32)
    top_p = torch.tensor([settings[b % 6][2] for b in range(B)], dtype=torch.float32)
    tokens, _ = ops.sample(logits, keys, temperature, top_k, top_p)
    for b in range(B):
        expected = naive_sample(logits[b], tuple(keys[b].tolist()), float(temperature[b]), int(top_k[b]), float(top_p[b]))
        assert int(tokens[b]) == expected, b


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.5), (20, 0.7), (0, 0.05)])
def test_never_picks_outside_allowed_set(top_k, top_p):
    g = torch.Generator().manual_seed(4)
    B, V = 400, 64
    logits = torch.randn(B, V, generator=g) * 2
    logits[:, 7] = float("-inf")  # a banned token
    logits[0, :3] = 4.0  # ties at the top-k boundary are all allowed
    tokens, _ = ops.sample(logits, _keys(B), *_params(B, temperature=0.9, top_k=top_k, top_p=top_p))
    for b in range(B):
        assert int(tokens[b]) in naive_allowed(logits[b], 0.9, top_k, top_p), b
    assert not (tokens == 7).any()


def _chi_square_p(counts, probs):
    n = counts.sum()
    keep = probs > 0
    assert (counts[~keep] == 0).all()  # never a zero-probability token
    expected = probs[keep] * n
    stat = float(((counts[keep] - expected) ** 2 / expected).sum())
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(stat / 2)))


@pytest.mark.parametrize(
    "temperature,top_k,top_p,probs_fn",
    [
        (1.0, 0, 1.0, lambda z: torch.softmax(z, 0)),
        (0.6, 0, 1.0, lambda z: torch.softmax(z / 0.6, 0)),
        (1.0, 4, 1.0, lambda z: torch.softmax(torch.where(z >= z.topk(4).values[-1], z, -math.inf), 0)),
        # softmax(z / 1.2) sorted: mass before the 3rd token is < 0.7 and before the 4th is >= 0.7
        (1.2, 0, 0.7, lambda z: torch.softmax(torch.where(z >= z.sort(descending=True).values[2], z / 1.2, -math.inf), 0)),
    ],
)
def test_empirical_distribution_matches_softmax(temperature, top_k, top_p, probs_fn):
    """40000 rows share one logit vector with distinct keys. Pearson's statistic is chi-square
    distributed for a correct sampler; the key set is fixed, so this is deterministic, and the
    threshold p > 1e-4 would reject a correct sampler for only 1 key set in 10**4, while the
    wrong temperature or an unrenormalised set gives p < 1e-100 at this sample size."""
    z = torch.tensor([2.0, 1.5, 1.2, 0.3, 0.0, -0.4, -1.0, -2.5], dtype=torch.float64)
    probs = probs_fn(z)
    if top_p < 1.0:
        sorted_p = torch.softmax(z / temperature, 0).sort(descending=True).values
        assert sorted_p[:2].sum() < top_p <= sorted_p[:3].sum()  # the case the formula assumes
    N = 40000
    logits = z.float().expand(N, -1).contiguous()
    tokens, _ = ops.sample(logits, _keys(N, seed=99), *_params(N, temperature, top_k, top_p))
    counts = torch.bincount(tokens, minlength=z.numel()).double()
    assert _chi_square_p(counts, probs) > 1e-4
    wrong = torch.softmax(z * 1.3, 0)  # a sharper distribution must be rejected
    assert _chi_square_p(counts, torch.where(probs > 0, wrong, 0.0) / torch.where(probs > 0, wrong, 0.0).sum()) < 1e-6


def test_fast_paths_give_identical_tokens(monkeypatch):
    """Pruned Gumbel hashing, sparse vs dense noise and the top-p probe are optimisations only."""
    g = torch.Generator().manual_seed(5)
    B, V = 12, 3000
    logits = torch.randn(B, V, generator=g) * 8  # peaked rows: pruning skips most tokens
    keys = torch.randint(0, 2**50, (B, 4), generator=g)
    temperature = torch.full((B,), 0.8)
    top_k = torch.tensor([0, 0, 50, 0] * 3, dtype=torch.int32)
    top_p = torch.tensor([1.0, 0.9, 1.0, 0.95] * 3, dtype=torch.float32)
    fast, _ = ops.sample(logits, keys, temperature, top_k, top_p)
    monkeypatch.setattr(reference, "_GUMBEL_SPREAD", math.inf)
    monkeypatch.setattr(reference, "_SPARSE_FRACTION", 0.0)
    monkeypatch.setattr(reference, "_TOP_P_PROBE", 2)
    dense, _ = ops.sample(logits, keys, temperature, top_k, top_p)
    monkeypatch.setattr(reference, "_SPARSE_FRACTION", 2.0)
    sparse, _ = ops.sample(logits, keys, temperature, top_k, top_p)
    assert torch.equal(fast, dense) and torch.equal(fast, sparse)


def test_sample_opcheck():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(6, 40, generator=g)
    temperature = torch.tensor([0.0, 1.0, 0.7, 1.0, 1.2, 0.5])
    top_k = torch.tensor([0, 0, 5, 1, 0, 3], dtype=torch.int32)
    top_p = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.8, 0.5])
    torch.library.opcheck(torch.ops.ponder.sample.default, (logits, _keys(6), temperature, top_k, top_p, "torch"))


def test_empty_batch():
    tokens, logprobs = ops.sample(torch.zeros(0, 10), _keys(0), *_params(0))
    assert tokens.shape == (0,) and tokens.dtype == torch.int64 and logprobs.dtype == torch.float32


def _sample_args(**over):
    args = dict(logits=torch.randn(3, 10), keys=_keys(3))
    args.update(zip(("temperature", "top_k", "top_p"), _params(3)))
    args.update(over)
    return args


@pytest.mark.parametrize(
    "over,exc,match",
    [
        (dict(logits=torch.randn(3, 10, 2)), ValueError, r"logits must be a \[B, V\] float"),
        (dict(logits=torch.zeros(3, 10, dtype=torch.int64)), TypeError, "logits must be"),
        (dict(logits=torch.zeros(3, 0)), ValueError, "V = 0"),
        (dict(keys=_keys(3).int()), TypeError, r"keys must be a \[B, 4\] int64"),
        (dict(keys=torch.zeros(3, 3, dtype=torch.int64)), ValueError, "keys has size 3 in dimension 1"),
        (dict(keys=_keys(2)), ValueError, "keys has size 2 in dimension 0"),
        (dict(temperature=torch.tensor([1.0, -0.5, 1.0])), ValueError, r"temperature\[1\] = -0.5"),
        (dict(temperature=torch.tensor([1.0, float("nan"), 1.0])), ValueError, r"temperature\[1\] = nan"),
        (dict(temperature=torch.ones(3, dtype=torch.float64)), TypeError, r"temperature must be a \[B\] float32"),
        (dict(top_k=torch.tensor([0, 11, 0], dtype=torch.int32)), ValueError, r"top_k\[1\] = 11 must lie in \[0, 10\]"),
        (dict(top_k=torch.tensor([0, -1, 0], dtype=torch.int32)), ValueError, r"top_k\[1\] = -1"),
        (dict(top_k=torch.zeros(3, dtype=torch.int64)), TypeError, r"top_k must be a \[B\] int32"),
        (dict(top_p=torch.tensor([1.0, 0.0, 1.0])), ValueError, r"top_p\[1\] = 0.0 must lie in \(0, 1\]"),
        (dict(top_p=torch.tensor([1.0, 1.5, 1.0])), ValueError, r"top_p\[1\] = 1.5"),
        (dict(top_p=torch.ones(4)), ValueError, "top_p has size 4"),
    ],
)
def test_sample_bad_input(over, exc, match):
    with pytest.raises(exc, match=match):
        ops.sample(**_sample_args(**over))
    ops.sample(**_sample_args())


def test_top_p_boundary_excludes_token_whose_preceding_mass_equals_top_p():
    """Keep tokens while the mass before them is < top_p: with top_p set to exactly the fp32 mass
    of the two best tokens (computed by the same softmax the op uses), the third is excluded."""
    z = torch.tensor([[1.0, 0.6, 0.3, -0.2, -1.0]])
    sorted_p = torch.softmax(z, -1).sort(descending=True).values
    top_p = float(sorted_p.cumsum(-1)[0, 1])
    N = 3000
    tokens, _ = ops.sample(z.expand(N, -1).contiguous(), _keys(N), *_params(N, top_p=top_p))
    assert set(tokens.tolist()) == {0, 1}
    # a hair more mass admits the third token (probability ~0.24 per draw, so it does show up)
    tokens, _ = ops.sample(z.expand(N, -1).contiguous(), _keys(N), *_params(N, top_p=top_p + 1e-6))
    assert set(tokens.tolist()) == {0, 1, 2}


def test_row_hash_torch_path_equals_numpy_path():
    """CPU keys are hashed with numpy; other devices with torch int64 ops. Both must agree."""
    keys = torch.tensor(KEYS + [(5, 6, 7, 8)], dtype=torch.int64)
    cpu = reference.sampling_row_hash(keys)
    assert torch.equal(reference._row_hash_torch(keys), cpu)
    assert cpu.tolist() == [py_row_hash(k) for k in KEYS + [(5, 6, 7, 8)]]
