"""Hand-rolled paged-KV bookkeeping for the model tests (the real PageTable lives in the core).

A sequence is a list of page ids plus a token count. Pages come from a shuffled free list so
block tables are never the identity and the page indirection is really exercised.
"""

from __future__ import annotations

import random
from typing import Dict, List, Sequence

import torch

from ponder import ops


class PagedSequences:
    def __init__(self, num_pages: int, page_size: int, seed: int = 0) -> None:
        self.page_size = page_size
        self.free = list(range(num_pages))
        random.Random(seed).shuffle(self.free)
        self.pages: List[List[int]] = []
        self.lens: List[int] = []

    def new(self) -> int:
        self.pages.append([])
        self.lens.append(0)
        return len(self.pages) - 1

    def fork(self, kv_cache: torch.Tensor, parent: int) -> int:
        """A child sharing the parent's full pages; a partial last page is copied for the child
        (what copy-on-write does before the child appends into it)."""
        child = self.new()
        pages = list(self.pages[parent])
        if self.lens[parent] % self.page_size:
            fresh = self.free.pop()
            src, dst = (torch.tensor([page], dtype=torch.int32) for page in (pages[-1], fresh))
            ops.copy_pages(kv_cache, src, dst)
            pages[-1] = fresh
        self.pages[child] = pages
        self.lens[child] = self.lens[parent]
        return child

    def _slot(self, seq: int, pos: int) -> int:
        page_idx, offset = divmod(pos, self.page_size)
        while len(self.pages[seq]) <= page_idx:
            self.pages[seq].append(self.free.pop())
        return self.pages[seq][page_idx] * self.page_size + offset

    def step(self, seqs: Sequence[int], tokens: Sequence[Sequence[int]]) -> Dict[str, torch.Tensor]:
        """Forward inputs appending ``tokens[i]`` to sequence ``seqs[i]`` (one ragged batch)."""
        ids, positions, slots, indptr = [], [], [], [0]
        for seq, toks in zip(seqs, tokens):
            start = self.lens[seq]
            for j, tok in enumerate(toks):
                ids.append(tok)
                positions.append(start + j)
                slots.append(self._slot(seq, start + j))
            self.lens[seq] = start + len(toks)
            indptr.append(indptr[-1] + len(toks))
        width = max(len(self.pages[s]) for s in seqs)
        tables = [self.pages[s] + [-1] * (width - len(self.pages[s])) for s in seqs]
        return dict(
            input_ids=torch.tensor(ids, dtype=torch.int64),
            positions=torch.tensor(positions, dtype=torch.int64),
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            block_tables=torch.tensor(tables, dtype=torch.int32),
            seq_lens=torch.tensor([self.lens[s] for s in seqs], dtype=torch.int32),
            query_indptr=torch.tensor(indptr, dtype=torch.int32),
        )
