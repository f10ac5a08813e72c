"""Per-token decisions of step decoding, free of engine state: which tokens a constraint
leaves, which sampled steps repeat a sibling, and the children's priors; and
:class:`StepConstraint`, a constraint given as the allowed steps of each node. When a step
ends is :class:`ponder.step_batch.StopRule`. :class:`ponder.Engine` drives them; they are
plain functions so they read (and test) on their own."""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch

from ponder.expansion import Branch


def constrain_logits(rows: Sequence[Branch], logits: torch.Tensor,
                     allowed_tokens: Callable[[int, List[int]], Optional[Iterable[int]]]) -> torch.Tensor:
    """``logits`` ([len(rows), V]) with every token ``allowed_tokens(parent, step tokens)``
    rules out set to -inf; a None answer leaves the row as it is. ValueError for an empty or
    out-of-range answer."""
    vocab = logits.shape[-1]
    mask = torch.zeros(logits.shape, dtype=torch.bool)
    for i, b in enumerate(rows):
        allowed = allowed_tokens(b.parent, list(b.tokens))
        if allowed is None:
            continue
        if isinstance(allowed, (str, bytes)) or not hasattr(allowed, "__iter__"):
            raise TypeError(f"allowed_tokens returned a {type(allowed).__name__} for a child of node {b.parent}; "
                            f"expected token ids (ints) or None")
        arr = np.asarray(allowed if isinstance(allowed, np.ndarray) else list(allowed))
        # int() would truncate 1.7 to token 1 and take True as token 1
        if arr.size and (arr.ndim != 1 or arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"allowed_tokens returned {arr.dtype} values of shape {arr.shape} for a child of node "
                            f"{b.parent}; expected a 1-D list of token ids (ints)")
        ids = arr.astype(np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError(f"allowed_tokens returned no token for a child of node {b.parent} after step "
                             f"tokens {b.tokens}: at least one token must stay allowed")
        if ids.min() < 0 or ids.max() >= vocab:
            raise ValueError(f"allowed_tokens returned token ids outside [0, {vocab}) for a child of node "
                             f"{b.parent}: {sorted(set(ids.tolist()))}")
        mask[i] = True
        mask[i, torch.from_numpy(ids)] = False
    if not bool(mask.any()):
        return logits
    return logits.masked_fill(mask.to(logits.device), float("-inf"))


def mask_with_trie(trie, states: np.ndarray, logits: torch.Tensor) -> torch.Tensor:
    """``logits`` ([B, V] fp32) with every token that does not continue row b's allowed steps
    (its ``TokenTrie`` node ``states[b]``; -1 = unconstrained) set to -inf. On the CPU the
    native trie masks the rows in place; elsewhere a mask is built from the nodes' children."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.stride(1) == 1:
        trie.mask(states, logits.data_ptr(), logits.shape[1], logits.stride(0))
        return logits
    keep = torch.ones(logits.shape, dtype=torch.bool)
    for b, s in enumerate(states.tolist()):
        if s >= 0:
            keep[b] = False
            keep[b, torch.as_tensor(trie.child_tokens(s), dtype=torch.long)] = True
    return logits.masked_fill(~keep.to(logits.device), float("-inf"))


def split_repeats(branches: Sequence[Branch], existing: Callable[[int], Set[tuple]]
                  ) -> Tuple[List[Branch], List[Branch]]:
    """(kept, repeats): a branch is a repeat when its step tokens equal those of an existing
    child of its parent (``existing(parent)``) or of an earlier branch."""
    seen: Dict[int, Set[tuple]] = {}
    kept: List[Branch] = []
    repeats: List[Branch] = []
    for b in branches:
        if b.parent not in seen:
            seen[b.parent] = set(existing(b.parent))
        key = tuple(b.tokens)
        if key in seen[b.parent]:
            repeats.append(b)
        else:
            seen[b.parent].add(key)
            kept.append(b)
    return kept, repeats


def sibling_priors(parents: np.ndarray, seq_logprobs: np.ndarray) -> np.ndarray:
    """float32 priors: each child's sequence probability normalised over its siblings."""
    priors = np.empty(parents.size, dtype=np.float32)
    for p in sorted(set(parents.tolist())):  # (np.unique would import numpy.ma: 0.1 s once)
        idx = np.nonzero(parents == p)[0]
        w = np.exp(seq_logprobs[idx] - seq_logprobs[idx].max())
        priors[idx] = w / w.sum()
    return priors


class StepConstraint:
    """Constrained decoding given per node as the set of allowed next steps (the fast path).

    ``fn(problem_index, path_text) -> list of str | None`` is called once per expanded node with
    the text generated so far on its path and returns every step the node may take next (each
    the whole text of a step, its delimiter included, e.g. ``"7 + 3 = 10\\n"``), or None for no
    restriction. The search encodes the steps once, the engine compiles them into a native
    token trie (``ponder._core.TokenTrie``) and masks the logits at every token without calling
    Python; a branch that has written a whole allowed step stops. The probabilities of the
    children are those of the model restricted to the allowed tokens, exactly as with the
    per-token callback form of ``search(constraint=...)``, which stays as the general (slow)
    fallback for constraints that cannot list their steps.
    """

    def __init__(self, fn: Callable[[int, str], Optional[Sequence[str]]]):
        if not callable(fn):
            raise TypeError(f"StepConstraint needs a callable fn(problem_index, path_text), got {type(fn).__name__}")
        self.fn = fn

    def steps(self, problem_index: int, text: str) -> Optional[List[str]]:
        out = self.fn(problem_index, text)
        if out is None:
            return None
        if isinstance(out, (str, bytes)) or not hasattr(out, "__iter__"):
            raise TypeError(f"StepConstraint fn returned {type(out).__name__}; expected a list of step strings or None")
        steps = list(out)
        bad = [s for s in steps if not isinstance(s, str) or not s]
        if bad:
            raise TypeError(f"StepConstraint fn returned {bad[0]!r} among its steps; every step must be a non-empty str")
        if not steps:
            raise ValueError(f"StepConstraint fn returned no step for problem {problem_index}; return None for no "
                             f"restriction")
        return steps
