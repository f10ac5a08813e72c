"""The engine's per-token decisions as plain functions, on hand-built branches."""

import numpy as np
import pytest
import torch

from ponder.decoding import constrain_logits, sibling_priors, split_repeats
from ponder.expansion import Branch


def branch(parent, tokens, length=10):
    return Branch(parent=parent, rng_id=parent, child_index=0, source=0, seq=0, tokens=list(tokens), logprobs=[],
                   length=length)


def test_constrain_logits_masks_only_constrained_rows():
    logits = torch.arange(12, dtype=torch.float32).reshape(2, 6)
    rows = [branch(7, []), branch(8, [1])]
    out = constrain_logits(rows, logits, lambda parent, toks: [0, 2] if parent == 7 else None)
    assert torch.equal(out[1], logits[1])
    assert out[0].tolist() == [0.0, float("-inf"), 2.0, float("-inf"), float("-inf"), float("-inf")]
    with pytest.raises(ValueError, match="outside \\[0, 6\\)"):
        constrain_logits(rows, logits, lambda parent, toks: [6])


def test_split_repeats_against_existing_and_earlier_siblings():
    bs = [branch(1, [3, 4]), branch(1, [3, 4]), branch(1, [5]), branch(2, [5]), branch(2, [9])]
    kept, repeats = split_repeats(bs, lambda p: {(9,)} if p == 2 else set())
    assert kept == [bs[0], bs[2], bs[3]]
    assert repeats == [bs[1], bs[4]]


def test_sibling_priors_normalise_per_parent():
    parents = np.array([4, 4, 9])
    priors = sibling_priors(parents, np.log(np.array([0.2, 0.6, 0.01])))
    np.testing.assert_allclose(priors, [0.25, 0.75, 1.0], rtol=1e-6)
