"""ponder: a test-time-compute engine for LLM reasoning.

Search over reasoning steps (MCTS, step-level beam search, best-of-N) with a policy model and a
value / process reward model, on a paged KV cache shared across search branches: the search tree
is the KV tree.
"""

from ponder._version import __version__
from ponder.engine import Engine
from ponder.expansion import Expansion, SamplingParams, StepStop
from ponder.forest import Forest
from ponder.page_table import KVCacheFull, PageTable
from ponder.scoring import Aggregation, TokenPairPRM, ValueHead, Verifier
from ponder.search import (
    BeamConfig,
    BestOfNConfig,
    Budget,
    MCTSConfig,
    SearchResult,
    TokenBeamConfig,
    TokenBeamOutput,
    beam_search,
    best_of_n,
    mcts,
    search,
    token_beam_search,
)

__all__ = [
    "Aggregation",
    "BeamConfig",
    "BestOfNConfig",
    "Budget",
    "Engine",
    "Expansion",
    "Forest",
    "KVCacheFull",
    "MCTSConfig",
    "PageTable",
    "SamplingParams",
    "SearchResult",
    "StepStop",
    "TokenBeamConfig",
    "TokenBeamOutput",
    "TokenPairPRM",
    "ValueHead",
    "Verifier",
    "__version__",
    "beam_search",
    "best_of_n",
    "mcts",
    "search",
    "token_beam_search",
]
