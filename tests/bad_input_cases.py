"""The rows of tests/test_bad_inputs.py: (id, target, call, exception type, message fragment).

``target`` names the object a row is run against, built fresh for every row:

- ``forest``: a Forest of two trees. Node ids: 0 root ``[1, 2]``, 1 root ``[3]``, 2 and 3
  children of 0, 4 child of 2, 5 a terminal child of 1; node 3 is released (N = 6).
- ``table``: a PageTable(8, 4): sequence 0 holds 6 tokens, 1 is a fork of 0, 2 was freed.
- ``engine``: an Engine on the tiny test model (vocab 65, context 256, 32 pages of 4 tokens):
  sequences 0 and 1 are prompts, 2 was freed.
- ``kv``: a KV cache tensor ``[L=2, 2, P=4, S=4, Hk=2, D=8]`` for the ops.
- ``none``: constructors and configs that hold no state.

The fragment is a regex that must name the argument (and, where there is one, the value), so a
row fails as soon as an error message stops saying what was wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, List, Type

import numpy as np
import torch

import ponder
from ponder import ops
from ponder.expansion import SamplingParams, StepStop
from ponder.forest import Forest
from ponder.models import DecoderLM, ModelConfig, load, load_gguf, load_hf, save_hf
from ponder.page_table import KVCacheFull, PageTable

NAN, INF = math.nan, math.inf
FREED = 2  # the freed handle of the table and engine targets
RELEASED = 3  # the released node of the forest target
STOP = StepStop(max_step_tokens=2)
BUDGET = ponder.Budget(max_expansions=2)


@dataclass
class Case:
    id: str
    target: str
    call: Callable[[Any], Any]
    exc: Type[BaseException]
    match: str


CASES: List[Case] = []


def rows(target: str, *entries) -> None:
    for id_, call, exc, match in entries:
        CASES.append(Case(f"{target}:{id_}", target, call, exc, match))


# ------------------------------------------------------------------------------------- Forest
rows(
    "forest",
    ("capacity -1", lambda f: Forest(-1), ValueError, r"initial_capacity=-1 must lie in"),
    ("capacity 0", lambda f: Forest(0), ValueError, r"initial_capacity=0 must lie in"),
    ("capacity 10**12", lambda f: Forest(10**12), ValueError, r"initial_capacity=1000000000000"),
    ("capacity float", lambda f: Forest(1.5), TypeError, r"capacity must be an int, got float"),
    ("capacity bool", lambda f: Forest(True), TypeError, r"capacity must be an int, got bool"),
    ("is_alive -1", lambda f: f.is_alive(-1), IndexError, r"node=-1 is out of range \[0, 6\)"),
    ("is_alive 2**40", lambda f: f.is_alive(2**40), IndexError, r"node=1099511627776 is out of range"),
    ("children -1", lambda f: f.children(-1), IndexError, r"node=-1 is out of range"),
    ("children released", lambda f: f.children(RELEASED), ValueError, r"node 3 was released"),
    ("add_roots negative token", lambda f: f.add_roots([-1], [0, 1]), ValueError, r"tokens\[0\]=-1 is negative"),
    ("add_roots indptr short", lambda f: f.add_roots([1, 2], [0, 1]), ValueError, r"tokens_indptr\[-1\]=1 must equal"),
    ("add_roots indptr decreasing", lambda f: f.add_roots([1, 2], [0, 2, 1, 2]), ValueError,
     r"tokens_indptr must be non-decreasing"),
    ("add_roots indptr not from 0", lambda f: f.add_roots([1, 2], [1, 2]), ValueError, r"tokens_indptr\[0\]=1 must be 0"),
    ("add_roots indptr empty", lambda f: f.add_roots([], []), ValueError, r"tokens_indptr must have at least one"),
    ("add_roots float tokens", lambda f: f.add_roots([1.0], [0, 1]), TypeError, r"tokens must hold integers, got dtype float64"),
    ("add_roots token 2**40", lambda f: f.add_roots([2**40], [0, 1]), ValueError, r"tokens contains 1099511627776"),
    ("add_roots float indptr", lambda f: f.add_roots([1], [0.0, 1.0]), TypeError, r"tokens_indptr must hold integers"),
    ("add_roots 2-D indptr", lambda f: f.add_roots([1], [[0, 1]]), TypeError, r"tokens_indptr must be a 1-D .* shape \(1, 2\)"),
    ("add_root str", lambda f: f.add_root("ab"), TypeError, r"tokens must be a 1-D array"),
    ("add_root None", lambda f: f.add_root(None), TypeError, r"tokens must be a 1-D array"),
    ("add_children parent -1", lambda f: f.add_children([-1], [1], [1.0]), IndexError, r"parents\[0\]=-1 is out of range"),
    ("add_children parent 99", lambda f: f.add_children([0, 99], [1, 1], [1.0, 1.0]), IndexError,
     r"parents\[1\]=99 is out of range"),
    ("add_children released parent", lambda f: f.add_children([0, RELEASED], [1, 1], [1.0, 1.0]), ValueError,
     r"parents\[1\]: node 3 was released"),
    ("add_children terminal parent", lambda f: f.add_children([5], [1], [1.0]), ValueError, r"node 5 is terminal"),
    ("add_children count 0", lambda f: f.add_children([0], [0], []), ValueError, r"counts\[0\]=0 must be >= 1"),
    ("add_children count 10**12", lambda f: f.add_children([0], [10**12], [1.0]), ValueError,
     r"counts contains 1000000000000"),
    ("add_children count 2**31-1", lambda f: f.add_children([0], [2**31 - 1], [1.0]), ValueError,
     r"priors has length 1 but sum\(counts\) is 2147483647"),
    ("add_children prior NaN", lambda f: f.add_children([0], [1], [NAN]), ValueError, r"priors\[0\]=nan is not finite"),
    ("add_children prior inf", lambda f: f.add_children([0], [1], [INF]), ValueError, r"priors\[0\]=inf is not finite"),
    ("add_children prior overflows float32", lambda f: f.add_children([0], [1], [1e39]), ValueError,
     r"priors\[0\]=1e\+39 is not finite as float32"),
    ("add_children prior negative", lambda f: f.add_children([0], [1], [-1.0]), ValueError, r"priors\[0\]=-1 is negative"),
    ("add_children prior str", lambda f: f.add_children([0], [1], ["a"]), TypeError, r"priors must hold real numbers"),
    ("add_children tokens alone", lambda f: f.add_children([0], [1], [1.0], tokens=[1]), ValueError,
     r"tokens and tokens_indptr must be given together"),
    ("add_children negative token", lambda f: f.add_children([0], [1], [1.0], tokens=[-3], tokens_indptr=[0, 1]),
     ValueError, r"tokens\[0\]=-3 is negative"),
    ("add_children indptr past tokens", lambda f: f.add_children([0], [1], [1.0], tokens=[3], tokens_indptr=[0, 2]),
     ValueError, r"tokens_indptr\[-1\]=2 must equal"),
    ("add_children page_seq -5", lambda f: f.add_children([0], [1], [1.0], page_seqs=[-5]), ValueError,
     r"page_seqs\[0\]=-5 must be a page sequence handle"),
    ("add_children int terminal flags", lambda f: f.add_children([0], [1], [1.0], terminal=[1]), TypeError,
     r"terminal must hold booleans, got dtype int64"),
    ("add_children reward NaN", lambda f: f.add_children([0], [1], [1.0], rewards=[NAN]), ValueError,
     r"rewards\[0\]=nan is not finite"),
    ("add_children path_scores length", lambda f: f.add_children([0], [1], [1.0], path_scores=[1.0, 2.0]), ValueError,
     r"path_scores has length 2 but sum\(counts\) is 1"),
    ("add_children 2-D parents", lambda f: f.add_children([[0]], [1], [1.0]), TypeError, r"parents must be a 1-D"),
    ("add_children float parents", lambda f: f.add_children([0.0], [1], [1.0]), TypeError, r"parents must hold integers"),
    ("add_children bool parents", lambda f: f.add_children([True], [1], [1.0]), TypeError, r"parents must hold integers"),
    ("add_children counts length", lambda f: f.add_children([0, 1], [1], [1.0]), ValueError,
     r"counts has length 1 but len\(parents\) is 2"),
    ("release -1", lambda f: f.release(-1), IndexError, r"node=-1 is out of range"),
    ("release twice", lambda f: f.release(RELEASED), ValueError, r"node 3 was released"),
    ("release float", lambda f: f.release(1.0), TypeError, r"node must be an int, got float"),
    ("release 2**40", lambda f: f.release(2**40), IndexError, r"node=1099511627776 is out of range"),
    ("select non-root", lambda f: f.select([2], 1, 1.0, 1.0, 0.0), ValueError, r"roots\[0\]: node 2 is not a root"),
    ("select root -1", lambda f: f.select([-1], 1, 1.0, 1.0, 0.0), IndexError, r"roots\[0\]=-1 is out of range"),
    ("select released root", lambda f: f.select([0, RELEASED], 1, 1.0, 1.0, 0.0), ValueError, r"roots\[1\]: node 3"),
    ("select leaves_per_tree 0", lambda f: f.select([0], 0, 1.0, 1.0, 0.0), ValueError, r"leaves_per_tree=0 must be >= 1"),
    ("select leaves_per_tree 10**12", lambda f: f.select([0], 10**12, 1.0, 1.0, 0.0), ValueError,
     r"leaves_per_tree=1000000000000 must be at most"),
    ("select c_puct NaN", lambda f: f.select([0], 1, NAN, 1.0, 0.0), ValueError, r"c_puct=nan is not finite"),
    ("select c_puct negative", lambda f: f.select([0], 1, -1.0, 1.0, 0.0), ValueError, r"c_puct=-1.0 must be >= 0"),
    ("select virtual_loss inf", lambda f: f.select([0], 1, 1.0, INF, 0.0), ValueError, r"virtual_loss=inf is not finite"),
    ("select fpu NaN", lambda f: f.select([0], 1, 1.0, 1.0, NAN), ValueError, r"fpu=nan is not finite"),
    ("select pw_alpha 2", lambda f: f.select([0], 1, 1.0, 1.0, 0.0, 1.0, 2.0), ValueError, r"pw_alpha=2.0 must lie in"),
    ("select c_puct str", lambda f: f.select([0], 1, "1", 1.0, 0.0), TypeError, r"c_puct must be a real number, got str"),
    ("backup -1", lambda f: f.backup([-1], [1.0]), IndexError, r"nodes\[0\]=-1 is out of range"),
    ("backup released", lambda f: f.backup([2, RELEASED], [1.0, 1.0]), ValueError, r"nodes\[1\]: node 3 was released"),
    ("backup NaN", lambda f: f.backup([2], [NAN]), ValueError, r"values\[0\]=nan is not finite"),
    ("backup length", lambda f: f.backup([2], [1.0, 2.0]), ValueError, r"values has length 2 but len\(nodes\) is 1"),
    ("backup discount 0", lambda f: f.backup([2], [1.0], 0.0), ValueError, r"discount=0.0 must lie in \(0, 1\]"),
    ("backup discount NaN", lambda f: f.backup([2], [1.0], NAN), ValueError, r"discount=nan is not finite"),
    ("cancel -1", lambda f: f.cancel([-1]), IndexError, r"nodes\[0\]=-1 is out of range"),
    ("cancel released", lambda f: f.cancel([RELEASED]), ValueError, r"nodes\[0\]: node 3 was released"),
    ("top_k key", lambda f: f.top_k([2], 1, "bogus"), ValueError, r"key='bogus' is not one of"),
    ("top_k k 0", lambda f: f.top_k([2], 0), ValueError, r"k=0 must be >= 1"),
    ("top_k duplicate", lambda f: f.top_k([2, 2], 1), ValueError, r"frontier contains node 2 more than once"),
    ("top_k -1", lambda f: f.top_k([-1], 1), IndexError, r"frontier\[0\]=-1 is out of range"),
    ("best_path by", lambda f: f.best_path(0, "bogus"), ValueError, r"by='bogus' is not one of"),
    ("best_path -1", lambda f: f.best_path(-1), IndexError, r"root=-1 is out of range"),
    ("best_path non-root", lambda f: f.best_path(2), ValueError, r"root: node 2 is not a root"),
    ("frontier released", lambda f: f.frontier([RELEASED]), ValueError, r"roots\[0\]: node 3 was released"),
    ("path_tokens -1", lambda f: f.path_tokens(-1), IndexError, r"node=-1 is out of range"),
    ("node_tokens released", lambda f: f.node_tokens(RELEASED), ValueError, r"node 3 was released"),
    ("set_path_scores NaN", lambda f: f.set_path_scores([2], [NAN]), ValueError, r"values\[0\]=nan is not finite"),
    ("set_rewards released", lambda f: f.set_rewards([RELEASED], [1.0]), ValueError, r"nodes\[0\]: node 3 was released"),
    ("set_priors negative", lambda f: f.set_priors([2], [-0.5]), ValueError, r"values\[0\]=-0.5 is a negative prior"),
    ("set_priors length", lambda f: f.set_priors([2], [0.5, 0.1]), ValueError, r"values has length 2"),
    ("set_page_seqs -5", lambda f: f.set_page_seqs([2], [-5]), ValueError, r"seqs\[0\]=-5 must be a page sequence"),
    ("set_page_seqs 2**40", lambda f: f.set_page_seqs([2], [2**40]), ValueError, r"seqs contains 1099511627776"),
    ("set_terminal inner node", lambda f: f.set_terminal([4, 0], [True, True]), ValueError,
     r"nodes\[1\]: node 0 has 1 children"),
    ("set_terminal int flags", lambda f: f.set_terminal([4], [1]), TypeError, r"flags must hold booleans"),
)

# ---------------------------------------------------------------------------------- PageTable
rows(
    "table",
    ("num_pages 0", lambda t: PageTable(0, 4), ValueError, r"num_pages=0 is out of range"),
    ("num_pages 10**12", lambda t: PageTable(10**12, 4), ValueError, r"num_pages=1000000000000 is out of range"),
    ("page_size 0", lambda t: PageTable(8, 0), ValueError, r"page_size=0 is out of range"),
    ("num_pages float", lambda t: PageTable(8.0, 4), TypeError, r"num_pages must be an int, got float"),
    ("num_pages bool", lambda t: PageTable(True, 4), TypeError, r"num_pages must be an int, got bool"),
    ("hash_bits 65", lambda t: PageTable(8, 4, hash_bits=65), ValueError, r"hash_bits=65 is out of range"),
    ("prefix_cache str", lambda t: PageTable(8, 4, prefix_cache="no"), TypeError, r"prefix_cache must be a bool, got str"),
    ("allocate empty", lambda t: t.allocate([]), ValueError, r"tokens must hold at least one token"),
    ("allocate -1", lambda t: t.allocate([-1]), ValueError, r"tokens\[0\]=-1 is negative"),
    ("allocate floats", lambda t: t.allocate([1.5]), TypeError, r"tokens must hold integers, got dtype float64"),
    ("allocate 2-D", lambda t: t.allocate([[1]]), TypeError, r"tokens must be 1-D, got shape \(1, 1\)"),
    ("allocate str", lambda t: t.allocate("ab"), TypeError, r"tokens must be 1-D"),
    ("allocate 2**40", lambda t: t.allocate([2**40]), ValueError, r"tokens values must fit in int32"),
    ("allocate past the pool", lambda t: t.allocate(list(range(100))), KVCacheFull, r"allocate needs 25 new pages"),
    ("fork -1", lambda t: t.fork(-1), ValueError, r"seq=-1 is not a sequence of this page table"),
    ("fork freed", lambda t: t.fork(FREED), ValueError, r"seq=2 was already freed"),
    ("fork float", lambda t: t.fork(1.0), TypeError, r"seq must be an int, got float"),
    ("fork bool", lambda t: t.fork(True), TypeError, r"seq must be an int, got bool"),
    ("fork 2**40", lambda t: t.fork(2**40), ValueError, r"seq=1099511627776 is out of range"),
    ("fork_many -1", lambda t: t.fork_many([0, -1]), ValueError, r"seqs\[1\]=-1 is not a sequence"),
    ("fork_many freed", lambda t: t.fork_many([FREED]), ValueError, r"seqs\[0\]=2 was already freed"),
    ("append duplicate", lambda t: t.append([0, 0], [1, 1]), ValueError, r"seqs\[1\]=0 is listed more than once"),
    ("append negative count", lambda t: t.append([0], [-1]), ValueError, r"counts\[0\]=-1 must be >= 0"),
    ("append 2**31-1 tokens", lambda t: t.append([0], [2**31 - 1]), KVCacheFull, r"append needs 536870913 new pages"),
    ("append two huge counts", lambda t: t.append([0, 1], [2**31 - 1, 2**31 - 1]), KVCacheFull,
     r"append needs 1073741825 new pages"),
    ("append lengths differ", lambda t: t.append([0], [1, 1]), ValueError, r"seqs and counts must have the same length"),
    ("append tokens short", lambda t: t.append([0], [2], [1]), ValueError, r"tokens must hold sum\(counts\)=2 ids, got 1"),
    ("append token -1", lambda t: t.append([0], [1], [-1]), ValueError, r"tokens\[0\]=-1 is negative"),
    ("append freed", lambda t: t.append([FREED], [1]), ValueError, r"seqs\[0\]=2 was already freed"),
    ("free -1", lambda t: t.free(-1), ValueError, r"seq=-1 is not a sequence"),
    ("free twice", lambda t: t.free(FREED), ValueError, r"seq=2 was already freed"),
    ("free_many duplicate", lambda t: t.free_many([0, 0]), ValueError, r"seqs\[1\]=0 is listed more than once"),
    ("free_many with a freed one", lambda t: t.free_many([0, FREED]), ValueError, r"seqs\[1\]=2 was already freed"),
    ("can_allocate 0", lambda t: t.can_allocate(0), ValueError, r"n_tokens=0 is out of range"),
    ("can_allocate [-1]", lambda t: t.can_allocate([-1]), ValueError, r"tokens\[0\]=-1 is negative"),
    ("can_allocate float", lambda t: t.can_allocate(1.5), TypeError, r"tokens must be 1-D"),
    ("can_append duplicate", lambda t: t.can_append([0, 0], [1, 1]), ValueError, r"seqs\[1\]=0 is listed more than once"),
    ("can_append freed", lambda t: t.can_append([FREED], [1]), ValueError, r"seqs\[0\]=2 was already freed"),
    ("batch_tables -1", lambda t: t.batch_tables([-1]), ValueError, r"seqs\[0\]=-1 is not a sequence"),
    ("batch_tables max_pages too small", lambda t: t.batch_tables([0], max_pages=1), ValueError,
     r"max_pages=1 is smaller than the longest page list"),
    ("batch_tables pad float", lambda t: t.batch_tables([0], pad=0.5), TypeError, r"pad must be an int, got float"),
    ("decode_step freed", lambda t: t.decode_step([0, FREED], [1, 2]), ValueError, r"seqs\[1\]=2 was already freed"),
    ("decode_step duplicate", lambda t: t.decode_step([0, 0], [1, 2]), ValueError, r"seqs\[1\]=0 is listed more than once"),
    ("decode_step token count", lambda t: t.decode_step([0, 1], [1]), ValueError, r"one token per sequence \(2\), got 1"),
    ("decode_step token -1", lambda t: t.decode_step([0], [-1]), ValueError, r"tokens\[0\]=-1 is negative"),
    ("decode_step plan sizes", lambda t: t.decode_step([0], [1], 0, max_pages_per_item=-1), ValueError,
     r"max_pages_per_item=-1 is out of range"),
    ("num_tokens freed", lambda t: t.num_tokens(FREED), ValueError, r"seq=2 was already freed"),
    ("refcount 8", lambda t: t.refcount(8), IndexError, r"page=8 is out of range \[0, 8\)"),
    ("is_cached -1", lambda t: t.is_cached(-1), IndexError, r"page=-1 is out of range"),
    ("slot_of t=-1", lambda t: t.slot_of(0, -1), IndexError, r"t=-1 is out of range \[0, 6\) for seq=0"),
    ("slot_of t=6", lambda t: t.slot_of(0, 6), IndexError, r"t=6 is out of range"),
    ("kv_bytes -1", lambda t: t.kv_bytes(-1), ValueError, r"bytes_per_token=-1 is out of range"),
)


# ------------------------------------------------------------------------------------- Engine
def _engine(e, **kw):
    return ponder.Engine(e.model, e.tokenizer, **{"num_pages": 8, "page_size": 4, **kw})


def _allowed(answer):
    """An expand with an ``allowed_tokens`` callback that always answers ``answer``."""
    return lambda e: e.expand([0], stop=STOP, allowed_tokens=lambda parent, step: answer)


def _evict_answer(answer):
    """An engine one page short of room whose evict callback answers ``answer``."""
    def call(e):
        small = _engine(e, num_pages=2)
        small.prefill([[1, 2, 3, 4, 5]])
        return small.prefill([[6, 7, 8, 9]], evict=lambda engine, pages: answer)
    return call


rows(
    "engine",
    ("page_size bool", lambda e: _engine(e, page_size=True), ValueError, r"page_size must be an int >= 1, got True"),
    ("num_pages bool", lambda e: _engine(e, num_pages=True), ValueError, r"num_pages must be an int in .* got True"),
    ("num_pages 10**12", lambda e: _engine(e, num_pages=10**12), ValueError, r"num_pages must be an int in \[1, 2147483647\]"),
    ("num_pages float", lambda e: _engine(e, num_pages=2.5), ValueError, r"num_pages must be an int .* got 2.5"),
    ("max_kv_bytes str", lambda e: _engine(e, num_pages=None, max_kv_bytes="big"), ValueError, r"max_kv_bytes must be an int"),
    ("max_kv_bytes NaN", lambda e: _engine(e, num_pages=None, max_kv_bytes=NAN), ValueError, r"max_kv_bytes .* got nan"),
    ("max_kv_bytes tiny", lambda e: _engine(e, num_pages=None, max_kv_bytes=5), ValueError, r"num_pages must be .* got 0"),
    ("neither size", lambda e: _engine(e, num_pages=None), ValueError, r"give num_pages or max_kv_bytes"),
    ("max_batch_tokens bool", lambda e: _engine(e, max_batch_tokens=True), ValueError, r"max_batch_tokens must be an int"),
    ("eos_token_ids [-1]", lambda e: _engine(e, eos_token_ids=[-1]), ValueError, r"eos_token_ids must hold token ids in \[0, 65\), got -1"),
    ("eos_token_ids [vocab]", lambda e: _engine(e, eos_token_ids=[65]), ValueError, r"eos_token_ids .* got 65"),
    ("eos_token_ids float", lambda e: _engine(e, eos_token_ids=[1.5]), ValueError, r"eos_token_ids .* got 1.5"),
    ("eos_token_ids str", lambda e: _engine(e, eos_token_ids="ab"), TypeError, r"eos_token_ids must be a list .* got str"),
    ("eos_token_ids int", lambda e: _engine(e, eos_token_ids=5), TypeError, r"eos_token_ids must be a list .* got int"),
    ("evict str", lambda e: _engine(e, evict="lru"), TypeError, r"evict must be callable .* got str"),
    ("backend", lambda e: _engine(e, backend="nope"), ValueError, r"backend must be one of .* got 'nope'"),
    ("decode_attention", lambda e: _engine(e, decode_attention="flash"), ValueError, r"decode_attention must be one of"),
    ("model str", lambda e: ponder.Engine("model", num_pages=4), TypeError, r"model must be a ponder.models.DecoderLM .* str"),
    ("prefix_cache str", lambda e: _engine(e, prefix_cache="no"), TypeError, r"prefix_cache must be a bool, got str"),
    ("expand seed 2**63", lambda e: e.expand([0], seed=2**63), ValueError, r"seed must be an int in \[0, 2\*\*63\), got 9223372036854775808"),
    ("expand seed -1", lambda e: e.expand([0], seed=-1), ValueError, r"seed must be an int .* got -1"),
    ("expand seed float", lambda e: e.expand([0], seed=1.5), ValueError, r"seed must be an int .* got 1.5"),
    ("expand handle -1", lambda e: e.expand([-1]), ValueError, r"seqs: sequence handle -1 is unknown"),
    ("expand freed", lambda e: e.expand([FREED]), ValueError, r"seqs: sequence handle 2 was freed"),
    ("expand duplicate", lambda e: e.expand([0, 0]), ValueError, r"seqs has duplicates"),
    ("expand nothing", lambda e: e.expand([]), ValueError, r"seqs is empty"),
    ("expand 2-D", lambda e: e.expand([[0]]), TypeError, r"seqs must be a 1-D sequence of ints"),
    ("expand 0 children", lambda e: e.expand([0], num_children=0), ValueError, r"num_children must be integers >= 1, got 0"),
    ("expand 10**12 children", lambda e: e.expand([0], num_children=10**12), ValueError,
     r"num_children asks for 1000000000000 children"),
    ("expand 2**63 children", lambda e: e.expand([0], num_children=2**63), ValueError,
     r"num_children asks for 9223372036854775808 children"),
    ("expand 2**62 children twice", lambda e: e.expand([0, 1], num_children=[2**62, 2**62]), ValueError,
     r"num_children asks for 9223372036854775808 children"),
    ("expand float children", lambda e: e.expand([0], num_children=1.5), ValueError, r"num_children must be integers"),
    ("expand children per parent", lambda e: e.expand([0, 1], num_children=[1, 2, 3]), ValueError,
     r"num_children must be an int or one per sequence \(2\)"),
    ("expand str children", lambda e: e.expand([0], num_children="2"), ValueError, r"num_children must be integers .* '2'"),
    ("expand rng_ids -1", lambda e: e.expand([0], rng_ids=[-1]), ValueError, r"rng_ids must be 1 ints in \[0, 2\*\*63\)"),
    ("expand rng_ids 2**63", lambda e: e.expand([0], rng_ids=[2**63]), ValueError, r"rng_ids .* got \[9223372036854775808\]"),
    ("expand rng_ids float", lambda e: e.expand([0], rng_ids=[1.5]), ValueError, r"rng_ids .* got \[1.5\]"),
    ("expand stop str", lambda e: e.expand([0], stop="\n"), TypeError, r"stop must be a StepStop, got str"),
    ("expand sampling dict", lambda e: e.expand([0], sampling={}), TypeError, r"sampling must be a SamplingParams"),
    ("expand allowed_tokens list", lambda e: e.expand([0], allowed_tokens=[1, 2]), TypeError,
     r"allowed_tokens must be callable .* got list"),
    ("expand evict str", lambda e: e.expand([0], evict="lru"), TypeError, r"evict must be callable .* got str"),
    ("allowed_tokens answers a float", _allowed([1.7]), TypeError, r"allowed_tokens returned float64 values"),
    ("allowed_tokens answers a bool", _allowed([True]), TypeError, r"allowed_tokens returned bool values"),
    ("allowed_tokens answers an int", _allowed(5), TypeError, r"allowed_tokens returned a int .* expected token ids"),
    ("allowed_tokens answers a str", _allowed("ab"), TypeError, r"allowed_tokens returned a str"),
    ("allowed_tokens answers nothing", _allowed([]), ValueError, r"allowed_tokens returned no token"),
    ("allowed_tokens answers the vocab size", _allowed([65]), ValueError, r"allowed_tokens returned token ids outside \[0, 65\)"),
    ("allowed_tokens answers -1", _allowed([-1]), ValueError, r"allowed_tokens returned token ids outside .* \[-1\]"),
    ("allowed_tokens answers 2-D", _allowed(np.ones((1, 1), np.int64)), TypeError, r"allowed_tokens returned int64 values of shape \(1, 1\)"),
    ("allowed_steps str", lambda e: e.expand([0], allowed_steps="ab"), ValueError, r"allowed_steps must hold one entry"),
    ("allowed_steps token past vocab", lambda e: e.expand([0], allowed_steps=[[[999]]]), IndexError, r"token id 999 outside \[0, 65\)"),
    ("allowed_steps token -1", lambda e: e.expand([0], allowed_steps=[[[-1]]]), IndexError, r"token id -1 outside"),
    ("allowed_steps empty step", lambda e: e.expand([0], allowed_steps=[[[]]]), ValueError, r"step 0 is empty"),
    ("allowed_steps no steps", lambda e: e.expand([0], allowed_steps=[[]]), ValueError, r"allowed_steps\[0\] is empty"),
    ("allowed_steps and allowed_tokens", lambda e: e.expand([0], allowed_steps=[None], allowed_tokens=lambda p, s: None),
     ValueError, r"give allowed_tokens or allowed_steps, not both"),
    ("evict callback answers None", _evict_answer(None), TypeError, r"evict must return sequence handles .* got NoneType"),
    ("evict callback answers -1", _evict_answer([-1]), ValueError, r"handles returned by evict: sequence handle -1 is unknown"),
    ("evict callback answers a float", _evict_answer([0.0]), TypeError, r"handles returned by evict must hold int"),
    ("decode handle -1", lambda e: e.decode([-1], [1]), ValueError, r"sequence handle -1 is unknown"),
    ("decode token = vocab", lambda e: e.decode([0], [65]), ValueError, r"tokens must be token ids in \[0, 65\), got \[65\]"),
    ("decode token -1", lambda e: e.decode([0], [-1]), ValueError, r"tokens must be token ids .* got \[-1\]"),
    ("decode duplicate", lambda e: e.decode([0, 0], [1, 2]), ValueError, r"seqs has duplicates"),
    ("decode lengths differ", lambda e: e.decode([0], [1, 2]), ValueError, r"tokens must hold one token per sequence \(1\), got 2"),
    ("decode float token", lambda e: e.decode([0], [1.5]), TypeError, r"tokens must be a 1-D sequence of ints, got float64"),
    ("decode evict str", lambda e: e.decode([0], [1], evict="x"), TypeError, r"evict must be callable"),
    ("prefill str", lambda e: e.prefill("abc"), TypeError, r"prompts must be a list of prompts, got str"),
    ("prefill nothing", lambda e: e.prefill([]), ValueError, r"prompts is empty"),
    ("prefill empty prompt", lambda e: e.prefill([[1], []]), ValueError, r"prompts\[1\] is empty"),
    ("prefill token = vocab", lambda e: e.prefill([[65]]), ValueError, r"prompts\[0\] has token ids outside \[0, 65\)"),
    ("prefill token -1", lambda e: e.prefill([[-1]]), ValueError, r"prompts\[0\] has token ids outside"),
    ("prefill 2-D prompt", lambda e: e.prefill([[[1]]]), TypeError, r"prompts\[0\] must be a 1-D sequence of token ids"),
    ("prefill float prompt", lambda e: e.prefill([[1.5]]), TypeError, r"prompts\[0\] must be a 1-D .* float64"),
    ("prefill fills the context", lambda e: e.prefill([[1] * 256]), ValueError, r"prompts\[0\] has 256 tokens; the model's context is 256"),
    ("prefill generator", lambda e: e.prefill(x for x in [[1]]), TypeError, r"prompts must be a list .* generator"),
    ("prefill None prompt", lambda e: e.prefill([None]), TypeError, r"prompts\[0\] must be a 1-D"),
    ("prefill evict str", lambda e: e.prefill([[1]], evict="x"), TypeError, r"evict must be callable .* got str"),
    ("fork -1", lambda e: e.fork([-1]), ValueError, r"sequence handle -1 is unknown"),
    ("fork freed", lambda e: e.fork([FREED]), ValueError, r"sequence handle 2 was freed"),
    ("fork scalar", lambda e: e.fork(0), TypeError, r"seqs must be a 1-D sequence of ints"),
    ("free duplicate", lambda e: e.free([0, 0]), ValueError, r"seqs has duplicates: free each handle once"),
    ("free -1", lambda e: e.free([-1]), ValueError, r"sequence handle -1 is unknown"),
    ("free twice", lambda e: e.free([FREED]), ValueError, r"sequence handle 2 was freed"),
    ("free live then unknown", lambda e: e.free([0, 99]), ValueError, r"sequence handle 99 is unknown"),
    ("evict -1", lambda e: e.evict([-1]), ValueError, r"seqs: sequence handle -1 is unknown"),
    ("evict live then -1", lambda e: e.evict([1, -1]), ValueError, r"sequence handle -1 is unknown"),
    ("evict freed", lambda e: e.evict([FREED]), ValueError, r"sequence handle 2 was freed"),
    ("evict float", lambda e: e.evict([1.0]), TypeError, r"seqs must be a 1-D sequence of ints, got float64"),
    ("hidden 99", lambda e: e.hidden([99]), ValueError, r"sequence handle 99 is unknown"),
    ("tokens -1", lambda e: e.tokens(-1), ValueError, r"seq: sequence handle -1 is unknown"),
    ("tokens float", lambda e: e.tokens(1.0), TypeError, r"seq must hold int sequence handles, got 1.0"),
    ("tokens bool", lambda e: e.tokens(True), TypeError, r"seq must hold int sequence handles, got True"),
    ("has_kv -1", lambda e: e.has_kv([-1]), ValueError, r"sequence handle -1 is unknown"),
    ("num_tokens freed", lambda e: e.num_tokens(FREED), ValueError, r"seq: sequence handle 2 was freed"),
    ("score_continuations scalar", lambda e: e.score_continuations(5, [[1]]), TypeError, r"seqs must be a 1-D sequence"),
    ("score_continuations token = vocab", lambda e: e.score_continuations([0], [[65]]), ValueError,
     r"token_lists\[0\] has token ids outside \[0, 65\)"),
    ("score_continuations str", lambda e: e.score_continuations([0], "ab"), ValueError, r"token_lists must hold one token list"),
    ("score_continuations empty list", lambda e: e.score_continuations([0], [[]]), ValueError, r"token_lists\[0\] is empty"),
    ("score_continuations past context", lambda e: e.score_continuations([0], [[1] * 300]), ValueError,
     r"token_lists\[0\] adds 300, more than the context of 256"),
    ("score_continuations evict str", lambda e: e.score_continuations([0], [[1]], evict=3), TypeError, r"evict must be callable"),
    ("extend None", lambda e: e.extend(None, [[1]]), TypeError, r"seqs must be a 1-D sequence"),
    ("extend token -1", lambda e: e.extend([0], [[-1]]), ValueError, r"token_lists\[0\] has token ids outside"),
    ("extend float token", lambda e: e.extend([0], [[1.5]]), TypeError, r"token_lists\[0\] must be a 1-D sequence of ints"),
    ("extend freed", lambda e: e.extend([FREED], [[1]]), ValueError, r"sequence handle 2 was freed"),
)


# ------------------------------------------------------------------------------------- search
class _Scorer:
    """A scorer whose ``score`` answers ``out(number of children)``."""

    def __init__(self, out):
        self.out = out

    def score(self, policy, expansion):
        return self.out(len(expansion.children))


def _search(**kw):
    args = {"scorer": None, "budget": BUDGET, "stop": STOP, "progress": False, "on_error": "raise", **kw}
    return lambda e: ponder.search([[1, 2]], e, **args)


rows(
    "engine",
    ("search algorithm", _search(algorithm="dfs"), ValueError, r"unknown algorithm 'dfs'"),
    ("search unknown option", _search(widthh=3), TypeError, r"unknown option\(s\) \['widthh'\] for algorithm 'mcts'"),
    ("search mcts without budget", _search(budget=None), ValueError, r"mcts needs a budget"),
    ("search seed 2**63", _search(seed=2**63), ValueError, r"seed must be an int in \[0, 2\*\*63\)"),
    ("search stop str", _search(stop="\n"), TypeError, r"stop must be a StepStop, got str"),
    ("search sampling dict", _search(sampling={}), TypeError, r"sampling must be a SamplingParams, got dict"),
    ("search scorer name", _search(scorer="prm"), TypeError, r"scorer must be ValueHead\(\), .* got 'prm'"),
    ("search on_error", _search(on_error="ignore"), ValueError, r"on_error must be one of .* got 'ignore'"),
    ("search prompt token = vocab", lambda e: ponder.search([[65]], e, budget=BUDGET, progress=False), ValueError,
     r"prompts\[0\] has token ids outside \[0, 65\)"),
    ("search prompts str", lambda e: ponder.search("ab", e, budget=BUDGET, progress=False), TypeError,
     r"prompts must be a list of prompts, got str"),
    ("search budget str", _search(budget="x"), TypeError, r"budget must be a ponder.Budget, got str"),
    ("search aggregation", _search(aggregation="max"), ValueError, r"aggregation mode must be one of .* got 'max'"),
    ("search token_cost twice", _search(aggregation=ponder.Aggregation(), token_cost=0.1), ValueError,
     r"token_cost is given both"),
    ("search config and options", _search(config=ponder.MCTSConfig(), num_children=2), ValueError,
     r"pass either config= or option keywords \['num_children'\]"),
    ("search config type", _search(config=ponder.BeamConfig()), TypeError, r"config for 'mcts' must be a MCTSConfig, got BeamConfig"),
    ("search leaves_per_tree 10**12", _search(leaves_per_tree=10**12), ValueError,
     r"MCTSConfig.leaves_per_tree must be an int in \[1, 65536\], got 1000000000000"),
    ("search num_children 10**12", _search(num_children=10**12), ValueError, r"MCTSConfig.num_children .* got 1000000000000"),
    ("search beam width 10**12", _search(algorithm="beam_search", width=10**12), ValueError,
     r"BeamConfig.width must be at most 65536"),
    ("search verifier function", _search(verifier=lambda i, s: None), TypeError, r"verifier must be a ponder.Verifier, got function"),
    ("search constraint int", _search(constraint=5), TypeError, r"constraint must be a ponder.StepConstraint or callable .* got int"),
    ("scorer answers one too many", _search(scorer=_Scorer(lambda c: np.zeros(c + 1))), ValueError,
     r"scorer _Scorer returned scores of shape \(5,\); expected \(4,\)"),
    ("scorer answers NaN", _search(scorer=_Scorer(lambda c: np.full(c, NAN))), ValueError,
     r"scorer _Scorer returned nan for child 0; step scores must be finite and in \[0, 1\]"),
    ("scorer answers 2.0", _search(scorer=_Scorer(lambda c: np.full(c, 2.0))), ValueError, r"scorer _Scorer returned 2.0"),
    ("scorer answers -inf", _search(scorer=_Scorer(lambda c: np.full(c, -INF))), ValueError, r"scorer _Scorer returned -inf"),
    ("scorer answers a str", _search(scorer=_Scorer(lambda c: "abc")), TypeError, r"scorer _Scorer returned str, not 4 numbers"),
    ("scorer answers None", _search(scorer=_Scorer(lambda c: None)), ValueError, r"scorer _Scorer returned scores of shape \(\)"),
    ("scorer answers 2-D", _search(scorer=_Scorer(lambda c: np.zeros((c, 1)))), ValueError,
     r"scorer _Scorer returned scores of shape \(4, 1\)"),
    ("verifier answers a str", _search(verifier=ponder.Verifier(lambda i, s: "yes")), ValueError,
     r"verifier returned 'yes' for problem 0; expected None, a bool or \[0, 1\]"),
    ("verifier answers a list", _search(verifier=ponder.Verifier(lambda i, s: [1])), ValueError,
     r"verifier returned \[1\] for problem 0"),
    ("verifier answers NaN", _search(verifier=ponder.Verifier(lambda i, s: NAN)), ValueError,
     r"verifier returned nan for problem 0; expected None, a bool or \[0, 1\]"),
    ("verifier answers 2", _search(verifier=ponder.Verifier(lambda i, s: 2)), ValueError, r"verifier returned 2 for problem 0"),
    ("constraint answers floats", _search(constraint=lambda i, s: [1.5]), TypeError,
     r"constraint returned float64 values of shape \(1,\)"),
    ("constraint answers the vocab size", _search(constraint=lambda i, s: [65]), ValueError,
     r"constraint returned token ids outside \[0, 65\): \[65\]"),
    ("constraint answers nothing", _search(constraint=lambda i, s: []), ValueError, r"constraint returned no token id"),
    ("token_beam_search config dict", lambda e: ponder.token_beam_search(e, [[1, 2]], {}), TypeError,
     r"config must be a TokenBeamConfig, got dict"),
    ("token_beam_search engine str", lambda e: ponder.token_beam_search("e", [[1, 2]], ponder.TokenBeamConfig()), TypeError,
     r"engine must be a ponder.Engine, got str"),
    ("token_beam_search eos past vocab", lambda e: ponder.token_beam_search(e, [[1, 2]], ponder.TokenBeamConfig(eos_token_ids=[999])),
     ValueError, r"eos_token_ids \[999\] are outside the vocabulary \[0, 65\)"),
    ("token_beam_search 10**6 beams", lambda e: ponder.token_beam_search(e, [[1, 2]], ponder.TokenBeamConfig(num_beams=10**6)),
     ValueError, r"num_beams=1000000 with 1 EOS tokens keeps 2000000 candidates"),
    ("token_beam_search 10**12 new tokens",
     lambda e: ponder.token_beam_search(e, [[1, 2]], ponder.TokenBeamConfig(max_new_tokens=10**12)), ValueError,
     r"max_new_tokens=1000000000000: together more than the model's context of 256"),
    ("token_beam_search prompt past vocab", lambda e: ponder.token_beam_search(e, [[999]], ponder.TokenBeamConfig()), ValueError,
     r"prompts\[0\] has token ids outside \[0, 65\)"),
)

# ------------------------------------------------------------------------- configs, no state
rows(
    "none",
    ("StepStop strings str", lambda _: StepStop(strings="\n\n"), TypeError, r"StepStop.strings must be a tuple or list, got str"),
    ("StepStop strings None", lambda _: StepStop(strings=None), TypeError, r"StepStop.strings must be a tuple or list, got NoneType"),
    ("StepStop empty string", lambda _: StepStop(strings=("",)), ValueError, r"StepStop.strings must hold non-empty str, got ''"),
    ("StepStop token -1", lambda _: StepStop(token_ids=[-1]), ValueError, r"StepStop.token_ids must hold token ids .* got -1"),
    ("StepStop token float", lambda _: StepStop(token_ids=[1.5]), ValueError, r"StepStop.token_ids .* got 1.5"),
    ("StepStop token_ids str", lambda _: StepStop(token_ids="ab"), TypeError, r"StepStop.token_ids must be a tuple or list, got str"),
    ("StepStop token_ids int", lambda _: StepStop(token_ids=5), TypeError, r"StepStop.token_ids must be a tuple or list, got int"),
    ("StepStop max_step_tokens 0", lambda _: StepStop(max_step_tokens=0), ValueError, r"StepStop.max_step_tokens must be an int >= 1, got 0"),
    ("StepStop max_step_tokens bool", lambda _: StepStop(max_step_tokens=True), ValueError, r"max_step_tokens .* got True"),
    ("StepStop stop_on_eos str", lambda _: StepStop(stop_on_eos="no"), TypeError, r"StepStop.stop_on_eos must be a bool, got 'no'"),
    ("SamplingParams temperature str", lambda _: SamplingParams(temperature="1"), TypeError,
     r"SamplingParams.temperature must be a real number, got str"),
    ("SamplingParams temperature None", lambda _: SamplingParams(temperature=None), TypeError, r"temperature must be a real number"),
    ("SamplingParams temperature NaN", lambda _: SamplingParams(temperature=NAN), ValueError, r"temperature must be finite and >= 0, got nan"),
    ("SamplingParams temperature -1", lambda _: SamplingParams(temperature=-1.0), ValueError, r"temperature must be finite and >= 0, got -1.0"),
    ("SamplingParams top_k bool", lambda _: SamplingParams(top_k=True), ValueError, r"top_k must be an int >= 0 .* got True"),
    ("SamplingParams top_k -1", lambda _: SamplingParams(top_k=-1), ValueError, r"top_k must be an int >= 0 .* got -1"),
    ("SamplingParams top_p str", lambda _: SamplingParams(top_p="0.5"), TypeError, r"SamplingParams.top_p must be a real number, got str"),
    ("SamplingParams top_p NaN", lambda _: SamplingParams(top_p=NAN), ValueError, r"top_p must be in \(0, 1\], got nan"),
    ("SamplingParams top_p 0", lambda _: SamplingParams(top_p=0.0), ValueError, r"top_p must be in \(0, 1\], got 0.0"),
    ("Budget without a hard limit", lambda _: ponder.Budget(), ValueError, r"this budget can never stop a search"),
    ("Budget negative", lambda _: ponder.Budget(max_expansions=-1), ValueError, r"Budget.max_expansions must be an int >= 1 or None, got -1"),
    ("Budget float", lambda _: ponder.Budget(max_expansions=2.0), ValueError, r"Budget.max_expansions .* got 2.0"),
    ("Budget max_seconds NaN", lambda _: ponder.Budget(max_seconds=NAN), ValueError, r"Budget.max_seconds must be a finite number"),
    ("Budget max_seconds inf", lambda _: ponder.Budget(max_seconds=INF), ValueError, r"Budget.max_seconds .* got inf"),
    ("Budget tol alone", lambda _: ponder.Budget(max_iterations=1, converge_tol=0.1), ValueError,
     r"Budget.converge_tol and Budget.converge_patience go together"),
    ("Budget stop_on_verified str", lambda _: ponder.Budget(max_iterations=1, stop_on_verified="yes"), TypeError,
     r"Budget.stop_on_verified must be a bool, got 'yes'"),
    ("MCTSConfig num_children 10**12", lambda _: ponder.MCTSConfig(num_children=10**12), ValueError,
     r"MCTSConfig.num_children must be an int in \[1, 65536\]"),
    ("MCTSConfig leaves_per_tree 0", lambda _: ponder.MCTSConfig(leaves_per_tree=0), ValueError, r"MCTSConfig.leaves_per_tree .* got 0"),
    ("MCTSConfig c_puct NaN", lambda _: ponder.MCTSConfig(c_puct=NAN), ValueError, r"MCTSConfig.c_puct must be a finite number, got nan"),
    ("MCTSConfig fpu inf", lambda _: ponder.MCTSConfig(fpu=INF), ValueError, r"MCTSConfig.fpu must be a finite number, got inf"),
    ("MCTSConfig final", lambda _: ponder.MCTSConfig(final="best"), ValueError, r"MCTSConfig.final must be one of .* got 'best'"),
    ("MCTSConfig discount 0", lambda _: ponder.MCTSConfig(discount=0), ValueError, r"MCTSConfig.discount must lie in \(0, 1\], got 0"),
    ("MCTSConfig refill str", lambda _: ponder.MCTSConfig(refill="yes"), ValueError, r"MCTSConfig.refill must be a bool"),
    ("BeamConfig width 0", lambda _: ponder.BeamConfig(width=0), ValueError, r"BeamConfig.width must be an int >= 1, got 0"),
    ("BeamConfig expansion 10**12", lambda _: ponder.BeamConfig(expansion=10**12), ValueError, r"BeamConfig.expansion must be at most 65536"),
    ("BeamConfig num_subtrees -1", lambda _: ponder.BeamConfig(num_subtrees=-1), ValueError, r"BeamConfig.num_subtrees must be an int >= 0"),
    ("BestOfNConfig n 0", lambda _: ponder.BestOfNConfig(n=0), ValueError, r"BestOfNConfig.n must be an int >= 1, got 0"),
    ("BestOfNConfig n 10**12", lambda _: ponder.BestOfNConfig(n=10**12), ValueError, r"BestOfNConfig.n must be at most 65536"),
    ("BestOfNConfig selection", lambda _: ponder.BestOfNConfig(selection="max"), ValueError, r"BestOfNConfig.selection must be one of"),
    ("BestOfNConfig answer_fn", lambda _: ponder.BestOfNConfig(answer_fn="x"), TypeError, r"BestOfNConfig.answer_fn must be callable"),
    ("TokenBeamConfig num_beams 0", lambda _: ponder.TokenBeamConfig(num_beams=0), ValueError, r"num_beams must be an int >= 1, got 0"),
    ("TokenBeamConfig eos [-1]", lambda _: ponder.TokenBeamConfig(eos_token_ids=[-1]), ValueError, r"eos_token_ids must hold ints >= 0, got -1"),
    ("TokenBeamConfig eos str", lambda _: ponder.TokenBeamConfig(eos_token_ids="ab"), TypeError, r"eos_token_ids must be a sequence .* got str"),
    ("TokenBeamConfig eos duplicate", lambda _: ponder.TokenBeamConfig(eos_token_ids=[1, 1]), ValueError, r"eos_token_ids has duplicates"),
    ("TokenBeamConfig length_penalty NaN", lambda _: ponder.TokenBeamConfig(length_penalty=NAN), ValueError,
     r"length_penalty must be a finite number, got nan"),
    ("TokenBeamConfig early_stopping", lambda _: ponder.TokenBeamConfig(early_stopping="always"), ValueError,
     r"early_stopping must be True, False or 'never', got 'always'"),
    ("TokenBeamConfig return more than beams", lambda _: ponder.TokenBeamConfig(num_beams=2, num_return_sequences=3), ValueError,
     r"num_return_sequences must be in \[1, num_beams=2\], got 3"),
    ("Aggregation mode", lambda _: ponder.Aggregation("max"), ValueError, r"aggregation mode must be one of .* got 'max'"),
    ("Aggregation token_cost str", lambda _: ponder.Aggregation("last", "x"), TypeError, r"token_cost must be a real number, got str"),
    ("Aggregation token_cost NaN", lambda _: ponder.Aggregation("last", NAN), ValueError, r"token_cost must be finite and >= 0, got nan"),
    ("Aggregation token_cost negative", lambda _: ponder.Aggregation("last", -0.1), ValueError, r"token_cost .* got -0.1"),
    ("TokenPairPRM same tokens", lambda _: ponder.TokenPairPRM(1, 1), ValueError, r"good_token and bad_token must differ, both are 1"),
    ("TokenPairPRM -1", lambda _: ponder.TokenPairPRM(-1, 1), ValueError, r"good_token must be a non-negative token id, got -1"),
    ("TokenPairPRM float", lambda _: ponder.TokenPairPRM(1, 2.0), ValueError, r"bad_token must be a non-negative token id, got 2.0"),
    ("TokenPairPRM empty tag", lambda _: ponder.TokenPairPRM(1, 2, step_tag=""), ValueError, r"step_tag must be a non-empty str"),
    ("Verifier int", lambda _: ponder.Verifier(5), TypeError, r"Verifier needs a callable fn\(problem_index, text\), got int"),
    ("StepConstraint int", lambda _: ponder.StepConstraint(5), TypeError, r"StepConstraint needs a callable fn"),
    ("ModelConfig vocab 0", lambda _: _config(vocab_size=0), ValueError, r"vocab_size must be a positive int, got 0"),
    ("ModelConfig vocab bool", lambda _: _config(vocab_size=True), ValueError, r"vocab_size must be a positive int, got True"),
    ("ModelConfig heads", lambda _: _config(num_heads=3, num_kv_heads=2), ValueError, r"num_heads \(3\) must be a multiple of num_kv_heads \(2\)"),
    ("ModelConfig odd head_dim", lambda _: _config(head_dim=7), ValueError, r"head_dim must be even"),
    ("ModelConfig rms_norm_eps NaN", lambda _: _config(rms_norm_eps=NAN), ValueError, r"rms_norm_eps must be > 0 and finite, got nan"),
    ("ModelConfig rope_theta inf", lambda _: _config(rope_theta=INF), ValueError, r"rope_theta must be > 0 and finite, got inf"),
    ("ModelConfig hidden_act", lambda _: _config(hidden_act="gelu"), ValueError, r"hidden_act must be 'silu'"),
    ("ModelConfig.from_hf str", lambda _: ModelConfig.from_hf("x"), TypeError, r"hf_config must be a dict or a PretrainedConfig, got str"),
    ("ModelConfig.from_hf missing key", lambda _: ModelConfig.from_hf({"model_type": "llama"}), ValueError,
     r"hf_config is missing required key 'vocab_size'"),
    ("DecoderLM config str", lambda _: DecoderLM("cfg"), TypeError, r"config must be a ModelConfig, got str"),
    ("load missing path", lambda _: load("/nonexistent/ponder-model"), FileNotFoundError, r"no checkpoint directory or .gguf file at '/nonexistent"),
    ("load int path", lambda _: load(5), TypeError, r"path must be a str or os.PathLike, got int"),
    ("load_hf a file", lambda _: load_hf(__file__), FileNotFoundError, r"path must be a checkpoint directory, got"),
    ("load_gguf a directory", lambda _: load_gguf("/"), FileNotFoundError, r"no GGUF file at '/'"),
    ("load_gguf not GGUF", lambda _: load_gguf(__file__), ValueError, r"not a GGUF file"),
    ("save_hf str model", lambda _: save_hf("m", "/nonexistent"), TypeError, r"model must be a DecoderLM, got str"),
)


def _config(**kw):
    base = dict(vocab_size=5, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=8,
                max_position_embeddings=8)
    return ModelConfig(**{**base, **kw})


# ----------------------------------------------------------------------------------------- ops
def _i32(*v):
    return torch.tensor(v, dtype=torch.int32)


def _kv_rows(k_heads=2, dtype=torch.float32):
    return torch.randn(1, k_heads, 8, dtype=dtype), torch.randn(1, k_heads, 8, dtype=dtype)


def _paged(kv, q_rows=1, heads=4, tables=((0, 1),), lens=(5,), indptr=(0, 1), scale=0.35):
    return ops.paged_attention(torch.randn(q_rows, heads, 8), kv, 0, torch.tensor(tables, dtype=torch.int32), _i32(*lens),
                               _i32(*indptr), scale)


def _sample(V=10, keys_shape=(2, 4), keys_dtype=torch.int64, temperature=1.0, top_k=0, top_p=1.0, logits=None):
    lg = torch.randn(2, V) if logits is None else logits
    return ops.sample(lg, torch.zeros(keys_shape, dtype=keys_dtype), torch.full((2,), temperature),
                      torch.full((2,), top_k, dtype=torch.int32), torch.full((2,), top_p))


def _value_score(rows=(0, 1), eps=1e-6, direction=8, bias=0.0, parent=2, depth=(1, 1), mode="last"):
    return ops.value_score(torch.randn(3, 8), torch.tensor(rows), None, eps, torch.randn(direction), bias, torch.zeros(parent),
                           _i32(*depth), mode)


ROPE = ops.rope_cache(8, 16, 10000.0)

rows(
    "kv",
    ("rms_norm int x", lambda kv: ops.rms_norm(torch.ones(3, 8, dtype=torch.int64), torch.ones(8), 1e-6), TypeError,
     r"x must be a \[..., C\] float tensor, got torch.int64"),
    ("rms_norm weight size", lambda kv: ops.rms_norm(torch.randn(3, 8), torch.ones(7), 1e-6), ValueError,
     r"weight has size 7 in dimension 0 .* expected 8"),
    ("rms_norm eps NaN", lambda kv: ops.rms_norm(torch.randn(3, 8), torch.ones(8), NAN), ValueError, r"eps must be a non-negative float, got nan"),
    ("rms_norm eps -1", lambda kv: ops.rms_norm(torch.randn(3, 8), torch.ones(8), -1.0), ValueError, r"eps must be .* got -1.0"),
    ("rms_norm list", lambda kv: ops.rms_norm([1.0], torch.ones(1), 1e-6), TypeError, r"x must be a \[..., C\] float tensor, got list"),
    ("rms_norm backend", lambda kv: ops.rms_norm(torch.randn(3, 8), torch.ones(8), 1e-6, backend="nope"), ValueError,
     r"backend must be one of .* got 'nope'"),
    ("rotary position = max_pos", lambda kv: ops.rotary(torch.randn(2, 4, 8), torch.randn(2, 2, 8), torch.tensor([0, 16]), ROPE),
     IndexError, r"positions must lie in \[0, 16\) .* \[0, 16\]"),
    ("rotary position -1", lambda kv: ops.rotary(torch.randn(2, 4, 8), torch.randn(2, 2, 8), torch.tensor([0, -1]), ROPE),
     IndexError, r"positions must lie in \[0, 16\) .* \[-1, 0\]"),
    ("rotary int32 positions", lambda kv: ops.rotary(torch.randn(2, 4, 8), torch.randn(2, 2, 8), _i32(0, 1), ROPE), TypeError,
     r"positions must be a 1-D int64 \[T\] tensor, got torch.int32"),
    ("rotary k dtype", lambda kv: ops.rotary(torch.randn(2, 4, 8), torch.randn(2, 2, 8).double(), torch.tensor([0, 1]), ROPE),
     TypeError, r"k must be a \[T, Hk, D\] float tensor, got torch.float64"),
    ("rope_cache odd head_dim", lambda kv: ops.rope_cache(7, 16, 10000.0), ValueError, r"head_dim must be a positive even int, got 7"),
    ("rope_cache theta NaN", lambda kv: ops.rope_cache(8, 16, NAN), ValueError, r"theta must be a number greater than 1, got nan"),
    ("copy_pages src = P", lambda kv: ops.copy_pages(kv, _i32(4), _i32(0)), ValueError, r"page ids must lie in \[0, 4\), got values in \[0, 4\]"),
    ("copy_pages src -1", lambda kv: ops.copy_pages(kv, _i32(-1), _i32(0)), ValueError, r"page ids must lie in \[0, 4\), got values in \[-1, 0\]"),
    ("copy_pages int64 ids", lambda kv: ops.copy_pages(kv, torch.tensor([1]), torch.tensor([0])), TypeError,
     r"src_pages must be a 1-D int32 tensor, got torch.int64"),
    ("copy_pages lengths", lambda kv: ops.copy_pages(kv, _i32(1, 2), _i32(0)), ValueError,
     r"src_pages and dst_pages must have the same length, got 2 and 1"),
    ("copy_pages 5-D cache", lambda kv: ops.copy_pages(kv[0], _i32(1), _i32(0)), ValueError, r"kv_cache must be a tensor of shape \[L, 2, P, S, Hk, D\]"),
    ("append_kv slot = P*S", lambda kv: ops.append_kv(kv, 0, *_kv_rows(), torch.tensor([16])), IndexError,
     r"slot_mapping values must be -1 \(skip\) or lie in \[0, 16\)"),
    ("append_kv layer = L", lambda kv: ops.append_kv(kv, 2, *_kv_rows(), torch.tensor([0])), IndexError, r"layer must lie in \[0, 2\) .* got 2"),
    ("append_kv layer -1", lambda kv: ops.append_kv(kv, -1, *_kv_rows(), torch.tensor([0])), IndexError, r"layer must lie in \[0, 2\) .* got -1"),
    ("append_kv heads", lambda kv: ops.append_kv(kv, 0, *_kv_rows(k_heads=3), torch.tensor([0])), ValueError,
     r"k has size 3 in dimension 1 .* expected 2 \(Hk"),
    ("append_kv dtype", lambda kv: ops.append_kv(kv, 0, *_kv_rows(dtype=torch.float16), torch.tensor([0])), TypeError,
     r"k has dtype torch.float16 but kv_cache has torch.float32"),
    ("paged_attention page = P", lambda kv: _paged(kv, tables=((0, 9),)), IndexError, r"block_tables\[0, 1\] = 9 must be a page id in \[0, 4\)"),
    ("paged_attention heads", lambda kv: _paged(kv, heads=3), ValueError, r"q has 3 heads, which is not a multiple of the kv_cache's 2"),
    ("paged_attention indptr", lambda kv: _paged(kv, indptr=(0, 2)), ValueError, r"query_indptr must be non-decreasing from 0 to T = 1"),
    ("paged_attention scale str", lambda kv: _paged(kv, scale="x"), TypeError, r"scale must be a float, got str 'x'"),
    ("sample temperature NaN", lambda kv: _sample(temperature=NAN), ValueError, r"temperature\[0\] = nan must be a finite value >= 0"),
    ("sample temperature -1", lambda kv: _sample(temperature=-1.0), ValueError, r"temperature\[0\] = -1.0"),
    ("sample top_k > V", lambda kv: _sample(top_k=11), ValueError, r"top_k\[0\] = 11 must lie in \[0, 10\]"),
    ("sample top_k -1", lambda kv: _sample(top_k=-1), ValueError, r"top_k\[0\] = -1 must lie in \[0, 10\]"),
    ("sample top_p 0", lambda kv: _sample(top_p=0.0), ValueError, r"top_p\[0\] = 0.0 must lie in \(0, 1\]"),
    ("sample top_p NaN", lambda kv: _sample(top_p=NAN), ValueError, r"top_p\[0\] = nan must lie in \(0, 1\]"),
    ("sample keys shape", lambda kv: _sample(keys_shape=(2, 3)), ValueError, r"keys has size 3 in dimension 1 .* expected 4"),
    ("sample keys dtype", lambda kv: _sample(keys_dtype=torch.int32), TypeError, r"keys must be a \[B, 4\] int64 .* got torch.int32"),
    ("sample V = 0", lambda kv: _sample(V=0), ValueError, r"logits must have at least one vocabulary entry, got V = 0"),
    ("sample keys rows", lambda kv: _sample(keys_shape=(1, 4)), ValueError, r"keys has size 1 in dimension 0 .* expected 2 \(B"),
    ("value_score mode", lambda kv: _value_score(mode="max"), ValueError, r"mode must be one of .* got 'max'"),
    ("value_score row = N", lambda kv: _value_score(rows=(0, 3)), IndexError, r"rows must lie in \[0, 3\) .* \[0, 3\]"),
    ("value_score row -1", lambda kv: _value_score(rows=(0, -1)), IndexError, r"rows must lie in \[0, 3\) .* \[-1, 0\]"),
    ("value_score depth 0", lambda kv: _value_score(depth=(0, 1)), ValueError, r"depth must be >= 1 .* got minimum 0"),
    ("value_score direction size", lambda kv: _value_score(direction=7), ValueError, r"direction has size 7 in dimension 0"),
    ("value_score bias NaN", lambda kv: _value_score(bias=NAN), ValueError, r"bias must be a finite float, got nan"),
    ("value_score eps NaN", lambda kv: _value_score(eps=NAN), ValueError, r"eps must be a non-negative float, got nan"),
    ("value_score parent_score length", lambda kv: _value_score(parent=3), ValueError, r"parent_score has size 3 in dimension 0"),
)
