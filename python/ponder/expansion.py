"""Value types of the engine: when a step stops, how tokens are sampled, what an expansion
returns, and the engine's counters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

FINISH_REASONS = ("stop", "eos", "length", "context")


@dataclass(frozen=True)
class StepStop:
    """When a reasoning step ends.

    strings: the step ends at the token that completes any of these strings in the step's text
        (detected across token boundaries; the token is kept whole).
    token_ids: the step ends after any of these tokens.
    max_step_tokens: the step ends after this many tokens (finish reason ``"length"``).
    stop_on_eos: the model's EOS tokens end the step and make the node terminal.
    """

    strings: Tuple[str, ...] = ("\n",)
    token_ids: Tuple[int, ...] = ()
    max_step_tokens: int = 64
    stop_on_eos: bool = True

    def __post_init__(self):
        for name in ("strings", "token_ids"):
            v = getattr(self, name)
            # a plain string would silently become one stop string per character
            if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
                raise TypeError(f"StepStop.{name} must be a tuple or list, got {type(v).__name__} {v!r}")
        object.__setattr__(self, "strings", tuple(self.strings))
        object.__setattr__(self, "token_ids", tuple(self.token_ids))
        for s in self.strings:
            if not isinstance(s, str) or not s:
                raise ValueError(f"StepStop.strings must hold non-empty str, got {s!r}")
        for t in self.token_ids:
            if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)) or t < 0:
                raise ValueError(f"StepStop.token_ids must hold token ids (ints >= 0), got {t!r}")
        object.__setattr__(self, "token_ids", tuple(int(t) for t in self.token_ids))
        if isinstance(self.max_step_tokens, bool) or not isinstance(self.max_step_tokens, int) \
                or self.max_step_tokens < 1:
            raise ValueError(f"StepStop.max_step_tokens must be an int >= 1, got {self.max_step_tokens!r}")
        if not isinstance(self.stop_on_eos, (bool, np.bool_)):
            raise TypeError(f"StepStop.stop_on_eos must be a bool, got {self.stop_on_eos!r}")


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 is greedy; top_k 0 and top_p 1.0 switch those filters off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        for name in ("temperature", "top_p"):
            v = getattr(self, name)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise TypeError(f"SamplingParams.{name} must be a real number, got {type(v).__name__} {v!r}")
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be finite and >= 0, got {self.temperature!r}")
        if isinstance(self.top_k, (bool, np.bool_)) or not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")


@dataclass
class Expansion:
    """What one ``Engine.expand`` call produced, one entry per new child (C children), children
    grouped by parent in the order the parents were given.

    parents, children: int64 [C] sequence handles (each child is a new live handle).
    parent_index: int64 [C], the position of each child's parent in the ``seqs`` argument.
    tokens / logprobs: per child an int32 / float32 array of the step's tokens and their
    log-probabilities under the (constrained) sampling distribution. hidden: [C, hidden_size]
    final hidden state at each step's last token. values: [C] float32 step values supplied by
    an engine that scores by itself (e.g. one without hidden states), else None: the native
    engine leaves scoring to the scorer. finish_reasons: one of ``FINISH_REASONS`` per child. terminal: bool [C] (EOS
    or context exhausted). priors: float32 [C], each child's step probability normalised over
    the siblings made in the same call.
    """

    parents: np.ndarray
    children: np.ndarray
    parent_index: np.ndarray
    tokens: List[np.ndarray]
    logprobs: List[np.ndarray]
    hidden: torch.Tensor
    values: Optional[torch.Tensor]
    finish_reasons: List[str]
    terminal: np.ndarray
    priors: np.ndarray
    # parent handle -> tokens decoded for its children dropped as duplicates (``expand(distinct=True)``)
    discarded_tokens: Dict[int, int] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(sum(len(t) for t in self.tokens))

    def subset(self, keep: np.ndarray) -> "Expansion":
        """The children where ``keep`` (bool [C]) is True; whole sibling groups must be kept or
        dropped together (priors are normalised over siblings). ``discarded_tokens`` keeps the
        entries of the parents that remain."""
        idx = np.nonzero(np.asarray(keep, dtype=bool))[0]
        parents = self.parents[idx]
        kept = set(parents.tolist())
        return Expansion(parents=parents, children=self.children[idx], parent_index=self.parent_index[idx],
                         tokens=[self.tokens[i] for i in idx], logprobs=[self.logprobs[i] for i in idx],
                         hidden=self.hidden[torch.as_tensor(idx, dtype=torch.long, device=self.hidden.device)],
                         values=None if self.values is None else self.values[
                             torch.as_tensor(idx, dtype=torch.long, device=self.values.device)],
                         finish_reasons=[self.finish_reasons[i] for i in idx], terminal=self.terminal[idx],
                         priors=self.priors[idx],
                         discarded_tokens={p: k for p, k in self.discarded_tokens.items() if p in kept})


@dataclass
class EngineStats:
    tokens_prefilled: int = 0
    tokens_decoded: int = 0
    # decode rows whose model work another row of the same group did (``dedup_rows``)
    decode_rows_shared: int = 0
    model_calls: int = 0
    pages_peak: int = 0
    evicted_sequences: int = 0
    reprefilled_sequences: int = 0
    extra: Dict[str, int] = field(default_factory=dict)


@dataclass
class Branch:
    parent: int  # parent handle
    rng_id: int
    child_index: int
    source: int  # the parent's position in the expand call
    seq: int
    tokens: List[int]
    logprobs: List[float]
    length: int = 0  # tokens in the sequence before the branch's next input token
    finish: Optional[str] = None  # set once the last token is known; the branch still feeds it
    hidden_ref: Optional[Tuple[torch.Tensor, int]] = None
    trie_state: int = -1  # node of the step trie its tokens reached (-1: unconstrained)
