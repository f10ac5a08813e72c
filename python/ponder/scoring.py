"""Step scorers and path aggregation.

A scorer turns the new steps of one ``Engine.expand`` call into step scores in [0, 1], all in
one batched call. The built-in ones (value head, token-pair PRM) describe a :class:`Readout`
instead; the search then scores a round's steps and aggregates their path scores in one fused
``ops.value_score`` call. Any object with ``score(policy, expansion) -> float [C]`` works too.

- :class:`ValueHead` reads the policy's own value head on each step's last hidden state (already
  computed by the expansion: no second forward).
- :class:`TokenPairPRM` is a Math-Shepherd / Qwen-PRM style reward model read out as
  ``sigmoid(h · (W[good] - W[bad]))`` from the scorer model's hidden state ``h`` (never the full
  vocabulary logits). Without a separate model it reads the policy's own hidden states; with one
  it keeps that model's KV in its own engine, one sequence per policy sequence (mirroring the
  search tree), so each step costs only the step's own tokens; the session evicts and frees the
  mirrored sequences together with the policy's.
- :class:`Verifier` wraps a ground-truth checker ``fn(problem_index, text) -> None | bool | float``;
  a non-None answer makes the node terminal with that score.

Path aggregation (:class:`Aggregation`) folds step scores along a path: ``last``, ``min``,
``prod`` or ``mean``, minus ``token_cost`` per generated token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from ponder import ops
from ponder.ops.value_score import MODES as AGGREGATIONS  # one list for the op and the API


@dataclass
class Readout:
    """What a built-in scorer reads its step scores from: ``sigmoid(direction · norm(h) + bias)``
    of each row of ``hidden`` ``[C_kids, C]`` (norm: RMSNorm with ``norm_weight`` / ``eps``, or
    none). The session hands it to one fused ``ops.value_score`` call that also aggregates the
    path scores."""

    hidden: torch.Tensor
    norm_weight: Optional[torch.Tensor]
    eps: float
    direction: torch.Tensor
    bias: float


def fused_scores(readout: Readout, parent_agg: np.ndarray, depth: np.ndarray, mode: str) -> Tuple[np.ndarray, np.ndarray]:
    """One ``ops.value_score`` call: (step scores float32 [M], aggregated path scores float64 [M])."""
    h = readout.hidden.detach()
    dev = h.device
    scores, agg = ops.value_score(
        h, torch.arange(h.shape[0], dtype=torch.int64, device=dev),
        None if readout.norm_weight is None else readout.norm_weight.detach().to(h.dtype), float(readout.eps),
        readout.direction.detach().to(dev), float(readout.bias),
        torch.as_tensor(np.asarray(parent_agg, dtype=np.float32), device=dev),
        torch.as_tensor(np.asarray(depth, dtype=np.int32), device=dev), mode)
    return scores.cpu().numpy().astype(np.float32), agg.cpu().numpy().astype(np.float64)


def _step_only(readout: Readout) -> np.ndarray:
    m = readout.hidden.shape[0]
    return fused_scores(readout, np.zeros(m), np.ones(m), "last")[0]


class ValueHead:
    """Step score = the policy model's value head, ``sigmoid(w · rmsnorm(h) + b)`` on each
    step's last hidden state (already computed by the expansion: no second forward)."""

    def readout(self, policy, expansion) -> Optional[Readout]:
        """The value head's readout, or None when the engine supplied ``expansion.values``
        itself (an engine without hidden states, e.g. a remote one)."""
        head = getattr(getattr(policy, "model", None), "value_head", None)
        if head is None:
            if expansion.values is not None:
                return None
            raise ValueError("ValueHead scorer needs a policy model with a value head (model.value_head is None)")
        return Readout(expansion.hidden, head.norm_weight, head.eps, head.weight, float(head.bias.detach()))

    def score(self, policy, expansion) -> np.ndarray:
        r = self.readout(policy, expansion)
        if r is None:
            return np.asarray(expansion.values.detach().float().cpu(), dtype=np.float32)
        return _step_only(r)


class TokenPairPRM:
    """``P(good) = sigmoid(h · (W[good] - W[bad]))`` at each step's end.

    Args:
        good_token, bad_token: token ids (in the scorer model's vocabulary) of the "good" / "bad"
            labels, e.g. "+" / "-" for Math-Shepherd.
        step_tag: text appended after each step before reading the score (Math-Shepherd's
            "ки"), or None to read at the step's last token.
        engine: the scorer's own :class:`~ponder.Engine` (a second model with its own KV), or
            None to score with the policy model itself. A separate scorer re-tokenises text with
            its own tokenizer, so both engines need tokenizers.
    """

    def __init__(self, good_token: int, bad_token: int, step_tag: Optional[str] = None, engine=None):
        for name, t in (("good_token", good_token), ("bad_token", bad_token)):
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
                raise ValueError(f"{name} must be a non-negative token id, got {t!r}")
        if good_token == bad_token:
            raise ValueError(f"good_token and bad_token must differ, both are {good_token}")
        if step_tag is not None and (not isinstance(step_tag, str) or not step_tag):
            raise ValueError(f"step_tag must be a non-empty str or None, got {step_tag!r}")
        self.good_token, self.bad_token, self.step_tag, self.engine = int(good_token), int(bad_token), step_tag, engine
        self.mirror: Dict[int, int] = {}  # policy sequence handle -> scorer sequence handle

    def _direction(self, model) -> torch.Tensor:
        w = model.embed if model.lm_head is None else model.lm_head  # [V, C]
        vocab = w.shape[0]
        for name, t in (("good_token", self.good_token), ("bad_token", self.bad_token)):
            if t >= vocab:
                raise ValueError(f"{name}={t} is outside the scorer vocabulary [0, {vocab})")
        return (w[self.good_token].float() - w[self.bad_token].float()).detach()  # [C]

    def _readout(self, model, hidden: torch.Tensor) -> Readout:
        return Readout(hidden, None, 0.0, self._direction(model), 0.0)

    def readout(self, policy, expansion) -> Readout:
        """Hidden states at each step's end (or at its step tag) and ``W[good] - W[bad]``."""
        if self.engine is None and self.step_tag is None:
            return self._readout(policy.model, expansion.hidden)
        scorer = self.engine if self.engine is not None else policy
        if scorer.tokenizer is None or policy.tokenizer is None:
            raise ValueError("TokenPairPRM with a step_tag or a separate engine needs tokenizers on both engines")
        tag = scorer.tokenizer.encode(self.step_tag) if self.step_tag else []
        if self.engine is None:
            # Read at the tag on throwaway forks of the children's own KV.
            hidden = policy.score_continuations(expansion.children, [tag] * len(expansion.children))
            return self._readout(policy.model, hidden)
        return self._readout(self.engine.model, self._mirrored_hidden(policy, expansion, tag))

    def score(self, policy, expansion) -> np.ndarray:
        return _step_only(self.readout(policy, expansion))

    def _mirrored_hidden(self, policy, expansion, tag) -> torch.Tensor:
        eng = self.engine
        parents = expansion.parents.tolist()
        # a parent seen for the first time (a prompt) is prefilled from its whole text
        fresh = [p for p in dict.fromkeys(parents) if p not in self.mirror]
        if fresh:
            texts = [policy.tokenizer.decode(policy.tokens(p).tolist()) for p in fresh]
            for p, h in zip(fresh, eng.prefill([eng.tokenizer.encode(t) for t in texts]).tolist()):
                self.mirror[p] = h
        steps = []
        for toks in expansion.tokens:
            steps.append(eng.tokenizer.encode(policy.tokenizer.decode(toks.tolist())) + list(tag))
        children = eng.extend([self.mirror[p] for p in parents], steps)
        for child, h in zip(expansion.children.tolist(), children.tolist()):
            self.mirror[child] = h
        return eng.hidden(children)

    def _mirrored(self, handles) -> list:
        return [self.mirror[int(h)] for h in handles if int(h) in self.mirror]

    def evict(self, handles) -> None:
        """Drop the scorer KV mirroring these policy sequences (re-prefilled if needed again)."""
        if self.engine is not None:
            self.engine.evict(self._mirrored(handles))

    def free(self, handles) -> None:
        """Forget these policy sequences: their mirrored scorer sequences are freed."""
        if self.engine is not None:
            mirrored = self._mirrored(handles)
            for h in handles:
                self.mirror.pop(int(h), None)
            self.engine.free(mirrored)


class Verifier:
    """Ground truth: ``fn(problem_index, text) -> None | bool | float``.

    ``text`` is the path's generated text (everything after the prompt). None means "not a final
    answer yet"; a bool or a number in [0, 1] makes the node terminal with that score. A score of
    1 (or True) counts as verified for ``Budget(stop_on_verified=True)``.
    """

    def __init__(self, fn: Callable[[int, str], object]):
        if not callable(fn):
            raise TypeError(f"Verifier needs a callable fn(problem_index, text), got {type(fn).__name__}")
        self.fn = fn

    def check(self, problem_index: int, text: str) -> Optional[float]:
        out = self.fn(problem_index, text)
        if out is None:
            return None
        value = float(out)
        if not (0.0 <= value <= 1.0):
            raise ValueError(f"verifier returned {out!r} for problem {problem_index}; expected None, a bool or [0, 1]")
        return value


@dataclass(frozen=True)
class Aggregation:
    """How step scores combine along a path: ``mode`` in last | min | prod | mean, minus
    ``token_cost`` per generated token on the path (a price on thinking longer)."""

    mode: str = "last"
    token_cost: float = 0.0

    def __post_init__(self):
        if self.mode not in AGGREGATIONS:
            raise ValueError(f"aggregation mode must be one of {AGGREGATIONS}, got {self.mode!r}")
        if not math.isfinite(self.token_cost) or self.token_cost < 0:
            raise ValueError(f"token_cost must be finite and >= 0, got {self.token_cost!r}")

    def combine(self, parent_agg: np.ndarray, step: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Aggregate of a path one step longer. ``parent_agg`` of a root is ignored (depth 1)."""
        parent_agg = np.asarray(parent_agg, dtype=np.float64)
        step = np.asarray(step, dtype=np.float64)
        first = np.asarray(depth) <= 1
        if self.mode == "last":
            out = step
        elif self.mode == "min":
            out = np.where(first, step, np.minimum(parent_agg, step))
        elif self.mode == "prod":
            out = np.where(first, step, parent_agg * step)
        else:
            d = np.maximum(np.asarray(depth, dtype=np.float64), 1.0)
            out = np.where(first, step, parent_agg + (step - parent_agg) / d)
        return out

    def path_score(self, agg: np.ndarray, path_tokens: np.ndarray) -> np.ndarray:
        return np.asarray(agg, dtype=np.float64) - self.token_cost * np.asarray(path_tokens, dtype=np.float64)


def resolve_scorer(scorer) -> object:
    """Accept a scorer object, ``"value"`` (the policy's value head) or None (no scores: 0.5)."""
    if scorer is None or isinstance(scorer, (ValueHead, TokenPairPRM)) or hasattr(scorer, "score"):
        return scorer
    if scorer == "value":
        return ValueHead()
    raise TypeError(f"scorer must be ValueHead(), TokenPairPRM(...), 'value', None or have .score(); got {scorer!r}")


def constant_scores(n: int, value: float = 0.5) -> np.ndarray:
    return np.full(n, value, dtype=np.float32)


__all__: Sequence[str] = ("AGGREGATIONS", "Aggregation", "TokenPairPRM", "ValueHead", "Verifier")
