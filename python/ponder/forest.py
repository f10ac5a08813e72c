"""The search forest: many search trees (one per problem) in one struct of arrays.

Every operation is batched over nodes and trees and runs in C++ (``ponder._core.Forest``);
this module converts and validates inputs and documents the exact semantics. ``N`` is the
number of nodes ever created (``num_nodes``); node ids are ``0 .. N-1`` in creation order and
are never reused, so an id that was released stays recognisable as released.

A small forest, one tree, root 0 holding the prompt ``[1, 2]``::

    f = Forest()
    root = f.add_root([1, 2])                                    # 0
    f.add_children([root], [2], priors=[0.7, 0.3], tokens=[5, 6], tokens_indptr=[0, 1, 2])
    #            0 [1 2]
    #           /      \\
    #      1 [5]        2 [6]         path_tokens(2) -> [1, 2, 6]

Every operation is all-or-nothing: when it raises, the forest is unchanged. Out-of-range ids
raise ``IndexError``; released ids, bad values (NaN/inf, negative priors, ...) raise
``ValueError``; arrays of the wrong kind or rank raise ``TypeError``. Node-state checks
(released, not a root, terminal parent) happen in C++ with the same message style.
"""

from __future__ import annotations

import math
import numbers
from typing import Dict, Optional, Sequence, Union

import numpy as np

from ponder import _core

__all__ = ["Forest", "NO_NODE", "NO_PARENT", "NO_PAGES", "TOP_K_KEYS", "BEST_PATH_BY"]

NO_NODE: int = _core.Forest.NO_NODE  # padding in select results; end of a child list
NO_PARENT: int = _core.Forest.NO_PARENT  # parent of a root
NO_PAGES: int = _core.Forest.NO_PAGES  # page_seq of a node that owns no KV pages
TOP_K_KEYS = ("path_score", "value", "reward", "visits", "prior")
BEST_PATH_BY = ("visits", "value", "score")

ArrayLike = Union[np.ndarray, Sequence]
_I32 = np.iinfo(np.int32)


def _vector(name: str, x) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise TypeError(f"{name} must be a 1-D array or sequence, got shape {a.shape}")
    return a


def _int32(name: str, x, *, ids: bool) -> np.ndarray:
    a = _vector(name, x)
    if a.dtype == np.int32:  # already in range: skip the min/max passes
        return np.ascontiguousarray(a)
    if a.size == 0:
        return np.empty(0, np.int32)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {a.dtype}")
    lo, hi = int(a.min()), int(a.max())
    if lo < _I32.min or hi > _I32.max:
        bad = lo if lo < _I32.min else hi
        msg = f"{name} contains {bad}, outside the int32 range [{_I32.min}, {_I32.max}]"
        raise IndexError(msg) if ids else ValueError(msg)
    return np.ascontiguousarray(a, dtype=np.int32)


def _indptr(name: str, x) -> np.ndarray:
    a = _vector(name, x)
    if a.size and a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {a.dtype}")
    if a.dtype.kind == "u" and a.size and int(a.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} contains {int(a.max())}, beyond int64")
    return np.ascontiguousarray(a, dtype=np.int64)


def _float32(name: str, x, n: Optional[int] = None, what: str = "sum(counts)") -> np.ndarray:
    a = _vector(name, x)
    if a.dtype == np.float32:
        out = np.ascontiguousarray(a)
    else:
        if a.size and a.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
        with np.errstate(over="ignore"):  # overflow to inf is reported below, naming the entry
            out = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(out).all():
        i = int(np.flatnonzero(~np.isfinite(out))[0])
        raise ValueError(f"{name}[{i}]={a[i]} is not finite as float32; expected a finite number")
    _check_len(name, out, n, what)
    return out


def _bool(name: str, x, n: Optional[int] = None, what: str = "sum(counts)") -> np.ndarray:
    a = _vector(name, x)
    if a.size and a.dtype.kind != "b":
        raise TypeError(f"{name} must hold booleans, got dtype {a.dtype}")
    out = np.ascontiguousarray(a, dtype=np.bool_)
    _check_len(name, out, n, what)
    return out


def _check_len(name: str, a: np.ndarray, n: Optional[int], what: str = "sum(counts)") -> None:
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} has length {a.shape[0]} but {what} is {n}")


def _int_scalar(name: str, x) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    return int(x)


def _node_scalar(name: str, x) -> int:
    """A node id: beyond int32 it cannot exist, so IndexError like any other unknown id (instead
    of pybind11's 'incompatible function arguments')."""
    v = _int_scalar(name, x)
    if not _I32.min <= v <= _I32.max:
        raise IndexError(f"{name}={v} is out of range: node ids are int32")
    return v


def _count_scalar(name: str, x) -> int:
    v = _int_scalar(name, x)
    if v < 1:
        raise ValueError(f"{name}={v} must be >= 1")
    if v > _I32.max:
        raise ValueError(f"{name}={v} must be at most {_I32.max}")
    return v


def _real_scalar(name: str, x) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    v = float(x)
    if not math.isfinite(v):
        raise ValueError(f"{name}={v} is not finite; expected a finite number")
    return v


def _view(name: str, doc: str) -> property:
    return property(lambda self: self._core.view(name), doc=doc)


class Forest:
    """Many search trees in one struct of arrays, with batched operations over all of them.

    Arrays (read-only zero-copy views of length ``N = num_nodes``; ``tokens`` has length
    ``num_tokens``). A view shows later updates to its first ``N`` entries only until the
    forest next grows; after growth it keeps the old buffer alive as a stale snapshot (never a
    dangling pointer). Take a fresh view (or ``export()`` a copy) after adding nodes.
    """

    parent = _view("parent", "int32[N]: parent id, NO_PARENT for roots (kept after release).")
    first_child = _view("first_child", "int32[N]: first live child, NO_NODE if none.")
    last_child = _view("last_child", "int32[N]: last live child (O(1) append), NO_NODE if none.")
    next_sibling = _view("next_sibling", "int32[N]: next live sibling, NO_NODE at the end.")
    num_children = _view("num_children", "int32[N]: number of live children.")
    depth = _view("depth", "int32[N]: 0 for roots, parent depth + 1 otherwise.")
    visits = _view("visits", "int32[N]: number of backups that passed through the node.")
    value_sum = _view("value_sum", "float64[N]: sum of (discounted) backed-up values.")
    virtual_loss = _view("virtual_loss", "int32[N]: pending selected leaves in the subtree.")
    prior = _view("prior", "float32[N]: policy prior (1.0 for roots).")
    reward = _view("reward", "float32[N]: the step's own score.")
    path_score = _view("path_score", "float32[N]: aggregated score of the path (search layer).")
    terminal = _view("terminal", "bool[N]: the node ends its path (no children allowed).")
    token_offset = _view("token_offset", "int64[N]: start of the node's own tokens in `tokens`.")
    token_len = _view("token_len", "int32[N]: number of the node's own tokens.")
    page_seq = _view("page_seq", "int32[N]: KV page-table sequence handle, NO_PAGES if none.")
    tree = _view("tree", "int32[N]: id of the node's root.")
    alive = _view("alive", "bool[N]: False once released.")
    pending = _view("pending", "bool[N]: selected and not yet backed up or cancelled.")
    tokens = _view("tokens", "int32[num_tokens]: token arena; a node owns tokens[off:off+len].")

    def __init__(self, capacity: int = 1024):
        """``capacity``: initial number of node slots (arrays grow geometrically beyond it)."""
        self._core = _core.Forest(_int_scalar("capacity", capacity))

    def __repr__(self) -> str:
        return f"Forest(num_nodes={self.num_nodes}, num_alive={self.num_alive})"

    @property
    def num_nodes(self) -> int:
        return self._core.num_nodes

    @property
    def num_alive(self) -> int:
        return self._core.num_alive

    @property
    def num_tokens(self) -> int:
        return self._core.num_tokens

    def is_alive(self, node: int) -> bool:
        return self._core.is_alive(_node_scalar("node", node))

    def children(self, node: int) -> np.ndarray:
        """int32[num_children]: the node's live children in sibling (insertion) order."""
        return self._core.children(_node_scalar("node", node))

    # --- structure -----------------------------------------------------------------------------
    def add_roots(self, tokens: ArrayLike, tokens_indptr: ArrayLike) -> np.ndarray:
        """Add R trees; root r owns ``tokens[tokens_indptr[r]:tokens_indptr[r+1]]`` (may be empty).

        tokens: int32[T] token ids >= 0; tokens_indptr: int64[R+1], starts at 0, non-decreasing,
        ends at T. Returns the new root ids, int32[R].
        """
        t = _int32("tokens", tokens, ids=False)
        return self._core.add_roots(t, _indptr("tokens_indptr", tokens_indptr))

    def add_root(self, tokens: ArrayLike = ()) -> int:
        """Add one tree whose root holds ``tokens`` (the prompt). Returns the root id."""
        t = _int32("tokens", tokens, ids=False)
        return int(self.add_roots(t, np.array([0, t.size], np.int64))[0])

    def add_children(self, parents: ArrayLike, counts: ArrayLike, priors: ArrayLike,
                     tokens: Optional[ArrayLike] = None, tokens_indptr: Optional[ArrayLike] = None,
                     rewards: Optional[ArrayLike] = None, terminal: Optional[ArrayLike] = None,
                     path_scores: Optional[ArrayLike] = None, page_seqs: Optional[ArrayLike] = None) -> np.ndarray:
        """Append ``counts[i]`` children to ``parents[i]``, for every i; returns their ids, int32[C].

        parents: int32[M] live, non-terminal nodes (repeats allowed); counts: int32[M], each >= 1;
        C = sum(counts). Child j (in order: parent 0's children first) gets priors[j] (float32[C],
        finite, >= 0), tokens[tokens_indptr[j]:tokens_indptr[j+1]] (int64[C+1]; both omitted =
        no tokens), rewards[j] (default 0), terminal[j] (default False), path_scores[j] (default
        rewards[j]) and page_seqs[j] (default NO_PAGES). Children go after existing siblings, get
        depth + 1 and the parent's tree. Pending state and virtual loss are not touched.
        """
        p = _int32("parents", parents, ids=True)
        c = _int32("counts", counts, ids=False)
        _check_len("counts", c, p.size, "len(parents)")
        if c.size and int(c.min()) < 1:
            i = int(np.argmin(c))
            raise ValueError(f"counts[{i}]={int(c[i])} must be >= 1")
        n = int(c.sum(dtype=np.int64))
        pr = _float32("priors", priors, n)
        if tokens is None and tokens_indptr is None:
            t, ip = np.empty(0, np.int32), np.zeros(n + 1, np.int64)
        elif tokens is None or tokens_indptr is None:
            raise ValueError("tokens and tokens_indptr must be given together")
        else:
            t, ip = _int32("tokens", tokens, ids=False), _indptr("tokens_indptr", tokens_indptr)
            _check_len("tokens_indptr", ip, n + 1, "sum(counts) + 1")
        r = None if rewards is None else _float32("rewards", rewards, n)
        term = None if terminal is None else _bool("terminal", terminal, n)
        ps = None if path_scores is None else _float32("path_scores", path_scores, n)
        pg = None if page_seqs is None else _int32("page_seqs", page_seqs, ids=False)
        if pg is not None:
            _check_len("page_seqs", pg, n)
        return self._core.add_children(p, c, pr, t, ip, r, term, ps, pg)

    def release(self, node: int) -> np.ndarray:
        """Release the subtree rooted at ``node`` (node included); returns its page handles.

        Returns int32[...]: every page_seq != NO_PAGES in the subtree, in depth-first preorder
        (children in sibling order). The subtree's nodes become dead (their fields keep their
        last values; pending is cleared); ``node`` leaves its parent's child list
        (num_children - 1). The subtree's pending leaves no longer count as virtual loss on the
        surviving ancestors; visits and value sums of the ancestors are kept. Releasing a root
        releases its whole tree.
        """
        return self._core.release(_node_scalar("node", node))

    # --- search --------------------------------------------------------------------------------
    def select(self, roots: ArrayLike, leaves_per_tree: int, c_puct: float, virtual_loss: float, fpu: float,
               pw_k: float = 0.0, pw_alpha: float = 0.5) -> np.ndarray:
        """PUCT descent with virtual loss: up to ``leaves_per_tree`` leaves per root.

        Returns int32[R, k] padded with NO_NODE. For each root in order, up to k descents. At
        node n: stop (leaf n) if n is terminal, has no children, or (pw_k > 0) has fewer than
        ``pw_k * max(visits(n), 1) ** pw_alpha`` children (progressive widening). Otherwise go
        to the child c maximising Q(c) + U(c), ties to the earliest sibling::

            N_eff(c) = visits(c) + virtual_loss_count(c)
            W_eff(c) = value_sum(c) - virtual_loss * virtual_loss_count(c)
            Q(c) = W_eff(c) / N_eff(c) if N_eff(c) > 0 else fpu
            U(c) = c_puct * prior(c) * sqrt(max(N_eff(n), 1)) / (1 + N_eff(c))

        If the leaf is already pending, the tree stops for this call (fewer leaves, never a
        duplicate). Otherwise the leaf becomes pending and every node root..leaf gets one more
        pending virtual visit. Values are single-agent (no sign flips). ``roots`` must be roots.
        c_puct >= 0, virtual_loss >= 0, pw_k >= 0, pw_alpha in [0, 1].
        """
        r = _int32("roots", roots, ids=True)
        k = _count_scalar("leaves_per_tree", leaves_per_tree)
        c = _real_scalar("c_puct", c_puct)
        vl = _real_scalar("virtual_loss", virtual_loss)
        pk = _real_scalar("pw_k", pw_k)
        pa = _real_scalar("pw_alpha", pw_alpha)
        for name, v in (("c_puct", c), ("virtual_loss", vl), ("pw_k", pk)):
            if v < 0:
                raise ValueError(f"{name}={v} must be >= 0")
        if not 0.0 <= pa <= 1.0:
            raise ValueError(f"pw_alpha={pa} must lie in [0, 1]")
        return self._core.select(r, k, c, vl, _real_scalar("fpu", fpu), pk, pa)

    def backup(self, nodes: ArrayLike, values: ArrayLike, discount: float = 1.0) -> None:
        """For each (node, value) in order, walk node -> root: visits += 1, value_sum += v, and
        ``v *= discount`` after each level. A pending node additionally stops being pending and
        its virtual visit is removed from node..root. discount in (0, 1]."""
        n = _int32("nodes", nodes, ids=True)
        v = _float32("values", values, n.size, "len(nodes)")
        d = _real_scalar("discount", discount)
        if not 0.0 < d <= 1.0:
            raise ValueError(f"discount={d} must lie in (0, 1]")
        self._core.backup(n, v, d)

    def cancel(self, nodes: ArrayLike) -> None:
        """Drop pending selections without a value: clear pending and remove the virtual visit
        from node..root. Visits and values are untouched; nodes not pending are left as they are."""
        self._core.cancel(_int32("nodes", nodes, ids=True))

    # --- queries -------------------------------------------------------------------------------
    def top_k(self, frontier: ArrayLike, k: int, key: str = "path_score", by_tree: bool = True) -> np.ndarray:
        """The k best nodes of ``frontier`` (distinct live ids) by ``key``, best first.

        key: one of TOP_K_KEYS; "value" is value_sum / visits (-inf when unvisited). Ties go to
        the lower node id. by_tree: up to k per tree, trees in order of first appearance in
        frontier, concatenated; otherwise k overall. Returns int32[...].
        """
        if key not in TOP_K_KEYS:
            raise ValueError(f"key={key!r} is not one of {TOP_K_KEYS}")
        kk = _int_scalar("k", k)
        if kk < 1:
            raise ValueError(f"k={kk} must be >= 1")
        kk = min(kk, _I32.max)  # "up to k": no frontier holds more nodes than int32 ids
        return self._core.top_k(_int32("frontier", frontier, ids=True), kk, key, bool(by_tree))

    def best_path(self, root: int, by: str = "visits") -> np.ndarray:
        """int32[path]: node ids root..leaf of the best path of root's tree.

        by="visits": from the root, step to the child with most visits (ties: higher mean value,
        then earlier sibling) until a node without children. by="value": step to the visited
        child with the highest mean value (ties: earlier sibling; if no child is visited, the
        first child). by="score": the terminal node with the highest path_score (among all
        leaves if the tree has no terminal node), ties to the lower id, with its ancestors.
        """
        if by not in BEST_PATH_BY:
            raise ValueError(f"by={by!r} is not one of {BEST_PATH_BY}")
        return self._core.best_path(_node_scalar("root", root), by)

    def frontier(self, roots: ArrayLike) -> np.ndarray:
        """int32[...]: the live, non-terminal leaves of each root's tree, tree by tree, each in
        depth-first preorder (children in sibling order). Pending leaves are included."""
        return self._core.frontier(_int32("roots", roots, ids=True))

    def path_tokens(self, node: int) -> np.ndarray:
        """int32[...]: the tokens of root..node concatenated (the prompt and every step)."""
        return self._core.path_tokens(_node_scalar("node", node))

    def node_tokens(self, node: int) -> np.ndarray:
        """int32[token_len[node]]: the node's own tokens (a copy)."""
        return self._core.node_tokens(_node_scalar("node", node))

    # --- setters -------------------------------------------------------------------------------
    def set_path_scores(self, nodes: ArrayLike, values: ArrayLike) -> None:
        """path_score[nodes[i]] = values[i] (finite), in order (a repeated node keeps the last)."""
        n = _int32("nodes", nodes, ids=True)
        self._core.set_path_scores(n, _float32("values", values, n.size, "len(nodes)"))

    def set_rewards(self, nodes: ArrayLike, values: ArrayLike) -> None:
        """reward[nodes[i]] = values[i] (finite), in order."""
        n = _int32("nodes", nodes, ids=True)
        self._core.set_rewards(n, _float32("values", values, n.size, "len(nodes)"))

    def set_priors(self, nodes: ArrayLike, values: ArrayLike) -> None:
        """prior[nodes[i]] = values[i] (finite, >= 0), in order (e.g. root Dirichlet noise)."""
        n = _int32("nodes", nodes, ids=True)
        self._core.set_priors(n, _float32("values", values, n.size, "len(nodes)"))

    def set_page_seqs(self, nodes: ArrayLike, seqs: ArrayLike) -> None:
        """page_seq[nodes[i]] = seqs[i] (a handle >= 0 or NO_PAGES), in order."""
        n = _int32("nodes", nodes, ids=True)
        s = _int32("seqs", seqs, ids=False)
        _check_len("seqs", s, n.size, "len(nodes)")
        self._core.set_page_seqs(n, s)

    def set_terminal(self, nodes: ArrayLike, flags: ArrayLike) -> None:
        """terminal[nodes[i]] = flags[i], in order; only leaves may be marked terminal."""
        n = _int32("nodes", nodes, ids=True)
        self._core.set_terminal(n, _bool("flags", flags, n.size, "len(nodes)"))

    # --- export --------------------------------------------------------------------------------
    def arrays(self) -> Dict[str, np.ndarray]:
        """Every array as a read-only zero-copy view (see the class docstring on staleness)."""
        return self._core.views()

    def export(self) -> Dict[str, np.ndarray]:
        """Every array as an owned copy (for JSON / DOT / training-data export)."""
        return {name: np.array(view) for name, view in self.arrays().items()}
