"""ponder: a test-time-compute engine for LLM reasoning.

Search over reasoning steps (MCTS, step-level beam search, best-of-N) with a policy model and a
value / process reward model, on a paged KV cache shared across search branches: the search tree
is the KV tree.

The public names below are imported on first use, so ``import ponder`` (and ``ponder.forest``,
``ponder.page_table`` or the command line's ``--help``) does not import torch.
"""

import os
import sys
import types
from importlib import import_module

# ponder's CPU hot path is many small ops per layer; OpenMP threads that spin between them made
# two threads several times slower than one on a busy 2-core machine (an expansion of SmolLM2:
# 6.2 s vs 2.2 s; 3.6 s with passive waiting). Passive waiting is the default unless the user set
# a policy; it takes effect when ponder is imported before torch (as the command line does).
# OpenMP reads the policy once, when torch loads it: note the one in effect, so the native
# kernels can keep their helper threads off the cores that torch's idle threads spin on.
_torch_loaded = "torch" in sys.modules
_user_policy = os.environ.get("OMP_WAIT_POLICY")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_OMP_SPINS = ((_user_policy if _torch_loaded else os.environ["OMP_WAIT_POLICY"]) or "").strip().upper() != "PASSIVE"
del _torch_loaded, _user_policy
# A search tree must not depend on the batch it is searched in, so a row's fp32 matrix product
# must not depend on the rows beside it. MKL (torch's CPU BLAS) picks kernels by row and thread
# count, and on some CPUs (measured: AVX-512 with AMX) a row's result then changes with the batch
# in the last bits, which can flip a sampled token. MKL's strict reproducibility mode keeps each
# row's arithmetic fixed (0 of 132 mismatches over 1-300 rows and 1-2 threads, against 132 of
# 132 without it; 64- and 528-row products as fast, 4-row ones within 15%). MKL reads it at its
# first call, so it applies when ponder is imported before any matrix product; a value the user
# set is kept. It does not cover products of 1-3 rows on every CPU (AMD EPYC), which is why the
# model runs short sequences' rows through the native kernel (ops/linear.py).
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

from ponder._version import __version__

_EXPORTS = {
    "Aggregation": "ponder.scoring",
    "BeamConfig": "ponder.search",
    "BestOfNConfig": "ponder.search",
    "Budget": "ponder.search",
    "Engine": "ponder.engine",
    "Expansion": "ponder.expansion",
    "Forest": "ponder.forest",
    "KVCacheFull": "ponder.page_table",
    "MCTSConfig": "ponder.search",
    "PageTable": "ponder.page_table",
    "SamplingParams": "ponder.expansion",
    "SearchResult": "ponder.search",
    "SharedBudget": "ponder.search.adaptive",
    "StepConstraint": "ponder.decoding",
    "StepStop": "ponder.expansion",
    "TokenBeamConfig": "ponder.search",
    "TokenBeamOutput": "ponder.search",
    "TokenPairPRM": "ponder.scoring",
    "ValueHead": "ponder.scoring",
    "Verifier": "ponder.scoring",
    "adaptive_search": "ponder.search.adaptive",
    "beam_search": "ponder.search",
    "best_of_n": "ponder.search",
    "mcts": "ponder.search",
    "search": "ponder.search",
    "token_beam_search": "ponder.search",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ponder' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return __all__


class _Package(types.ModuleType):
    """``ponder.search`` names the search function, as it did before the lazy imports; the import
    system would otherwise bind the ``ponder.search`` subpackage over it once it is imported
    (the subpackage stays importable as ``import ponder.search`` / ``from ponder.search import``)."""

    def __setattr__(self, name, value):
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
