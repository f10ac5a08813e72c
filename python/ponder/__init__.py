"""ponder: a test-time-compute engine for LLM reasoning.

Search over reasoning steps (MCTS, step-level beam search, best-of-N) with a policy model and a
value / process reward model, on a paged KV cache shared across search branches: the search tree
is the KV tree.
"""

from ponder._version import __version__

__all__ = ["__version__"]
