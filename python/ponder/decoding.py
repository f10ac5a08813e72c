"""Per-token decisions of step decoding, free of engine state: when a branch's step ends,
which tokens a constraint leaves, which sampled steps repeat a sibling, and the children's
priors. :class:`ponder.Engine` drives them; they are plain functions so they read (and test)
on their own."""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch

from ponder.expansion import StepStop, Branch


def finish_reason(b: Branch, stop: StepStop, eos_token_ids: Set[int], tokenizer, max_context: int) -> Optional[str]:
    """Why ``b``'s step ends after its last sampled token, or None if it goes on."""
    t = b.tokens[-1]
    if stop.stop_on_eos and t in eos_token_ids:
        return "eos"
    if t in stop.token_ids:
        return "stop"
    if stop.strings:
        text = tokenizer.decode(b.tokens)
        if any(s in text for s in stop.strings):
            return "stop"
    if len(b.tokens) >= stop.max_step_tokens:
        return "length"
    if b.length + 1 >= max_context:  # after feeding this token there is no room for another
        return "context"
    return None


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
        ids = np.fromiter((int(t) for t in allowed), dtype=np.int64)
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
    for p in np.unique(parents):
        idx = np.nonzero(parents == p)[0]
        w = np.exp(seq_logprobs[idx] - seq_logprobs[idx].max())
        priors[idx] = w / w.sum()
    return priors
