"""The engine's sequence records: what it keeps per KV sequence handle besides the pages.

A handle names one token sequence (a prompt, or a prompt plus the steps of one search path).
The record holds the sequence's own tokens (those after its parent's), a link to its parent's
record (so the full token path can always be rebuilt, even after the parent handle is freed),
the page-table sequence that holds its KV (``NO_PAGES`` once evicted), the hidden state at its
last token, and what :meth:`ponder.Engine.expand` needs to draw more children later: how many
were drawn so far and which steps its live children hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Set, Tuple

import numpy as np
import torch

NO_PAGES = -1  # a record whose KV is not resident (evicted, or dropped after a failed prefill)


@dataclass(eq=False)
class SeqRecord:
    handle: int
    parent: Optional["SeqRecord"]
    tokens: np.ndarray  # int32: the sequence's own tokens (after the parent's)
    length: int  # tokens of the whole path
    pages: int = NO_PAGES  # page-table sequence id
    hidden: Optional[Tuple[torch.Tensor, int]] = None  # (batch hidden [rows, C], row) at the last token
    draws: int = 0  # children drawn by expand (kept or dropped): the next child's rng index
    child_steps: Dict[Tuple[int, ...], int] = field(default_factory=dict)  # live children's steps -> count
    last_use: int = 0  # engine clock of the last expand / decode / fork touching it
    step_key: Optional[Tuple[int, ...]] = None  # its step as counted in parent.child_steps

    def path_tokens(self) -> np.ndarray:
        """int32 [length]: the tokens of the whole path (the prompt first)."""
        parts: List[np.ndarray] = []
        rec: Optional[SeqRecord] = self
        while rec is not None:
            parts.append(rec.tokens)
            rec = rec.parent
        return np.concatenate(parts[::-1]) if len(parts) > 1 else parts[0].copy()


class SeqTable:
    """Live handles -> records; handles are never reused."""

    def __init__(self) -> None:
        self._records: Dict[int, SeqRecord] = {}
        self._next = 0
        self.clock = 0

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, handle: int) -> bool:
        return int(handle) in self._records

    def new(self, parent: Optional[SeqRecord], tokens: np.ndarray, pages: int, child: bool = False) -> SeqRecord:
        """A record for ``tokens`` after ``parent``; ``child``: count it among the parent's
        children (a step of ``expand`` / ``extend``, not a fork)."""
        toks = np.asarray(tokens, dtype=np.int32).reshape(-1)
        length = toks.size + (parent.length if parent is not None else 0)
        rec = SeqRecord(handle=self._next, parent=parent, tokens=toks, length=length, pages=pages,
                        last_use=self.clock)
        self._records[self._next] = rec
        self._next += 1
        if child and parent is not None:
            rec.step_key = tuple(toks.tolist())
            parent.child_steps[rec.step_key] = parent.child_steps.get(rec.step_key, 0) + 1
        return rec

    def get(self, handle, what: str = "seqs") -> SeqRecord:
        if isinstance(handle, (bool, np.bool_)) or not isinstance(handle, (int, np.integer)):
            raise TypeError(f"{what} must hold int sequence handles, got {handle!r}")
        rec = self._records.get(int(handle))
        if rec is None:
            state = "was freed" if 0 <= int(handle) < self._next else "is unknown"
            raise ValueError(f"{what}: sequence handle {int(handle)} {state} (the engine has handed out "
                             f"{self._next} handles, {len(self._records)} live)")
        return rec

    def handles(self) -> List[int]:
        return list(self._records)

    def lookup(self, handles: Iterable, what: str = "seqs") -> List[SeqRecord]:
        return [self.get(h, what) for h in handles]

    def remove(self, rec: SeqRecord) -> None:
        del self._records[rec.handle]
        if rec.step_key is not None:
            left = rec.parent.child_steps.get(rec.step_key, 0) - 1
            if left > 0:
                rec.parent.child_steps[rec.step_key] = left
            else:
                rec.parent.child_steps.pop(rec.step_key, None)

    def resident(self) -> List[SeqRecord]:
        """Records holding KV, least recently used first (ties: older handle first)."""
        recs = [r for r in self._records.values() if r.pages != NO_PAGES]
        recs.sort(key=lambda r: (r.last_use, r.handle))
        return recs

    def touch(self, recs: Iterable[SeqRecord]) -> None:
        self.clock += 1
        for r in recs:
            r.last_use = self.clock

    def steps_of(self, rec: SeqRecord) -> Set[Tuple[int, ...]]:
        return set(rec.child_steps)
