"""The vectorised step-end rule against a per-branch oracle, and the stop-string candidates."""

import numpy as np
import pytest

from ponder.expansion import StepStop
from ponder.step_batch import CODE, RUNNING, StopRule, stop_string_candidates


class Pieces:
    """A toy tokenizer: token i is pieces[i]; a piece starting with "_" is a word that gets a
    leading space except when it comes first (SentencePiece style); "<" and ">" are the two
    halves of one two-byte character, which decodes only when they are adjacent."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids):
        out = []
        for k, i in enumerate(ids):
            p = self.pieces[i]
            out.append((" " if k else "") + p[1:] if p.startswith("_") else p)
        return "".join(out).replace("<>", "\u00e9").replace("<", "\ufffd").replace(">", "\ufffd")


PIECES = ["a", "b", "ab", "_the", "_end", "\n", "\n\n", "x.", "<", ">", "", "q"]


def oracle(tokens, length, stop, eos, tok, max_context, at_leaf):
    """The step-end decision for one branch, written out rule by rule."""
    t = tokens[-1]
    if stop.stop_on_eos and t in eos:
        return "eos"
    if t in stop.token_ids:
        return "stop"
    if stop.strings and any(s in tok.decode(tokens) for s in stop.strings):
        return "stop"
    if len(tokens) >= stop.max_step_tokens:
        return "length"
    if length + 1 >= max_context:
        return "context"
    return "stop" if at_leaf else None


@pytest.mark.parametrize("strings", [("\n",), ("b a",), (" the",), ("\u00e9",), ("x.", "end"), ("ab\n\n",)])
def test_codes_match_the_per_branch_rule(strings):
    tok = Pieces(PIECES)
    stop = StepStop(strings=strings, token_ids=(11,), max_step_tokens=6)
    rule = StopRule(stop, {0}, tok, len(PIECES), max_context=40)
    rng = np.random.default_rng(0)
    checked = stopped_by_string = 0
    for _ in range(300):
        n = 16
        width = 6
        counts = rng.integers(1, width + 1, size=n)
        tokens = rng.integers(0, len(PIECES), size=(n, width)).astype(np.int32)
        # a step only reaches its last token if no earlier prefix stopped it: cut each row at
        # its first stop under the oracle, as decoding would
        for i in range(n):
            for c in range(1, counts[i] + 1):
                if oracle(tokens[i, :c].tolist(), 0, stop, {0}, tok, 40, False) is not None:
                    counts[i] = c
                    break
        lengths = rng.integers(0, 42, size=n)
        at_leaf = rng.random(n) < 0.2
        codes = rule.codes(tokens, counts, lengths, at_leaf)
        for i in range(n):
            want = oracle(tokens[i, :counts[i]].tolist(), int(lengths[i]), stop, {0}, tok, 40, bool(at_leaf[i]))
            assert codes[i] == (RUNNING if want is None else CODE[want]), (tokens[i, :counts[i]], want, codes[i])
            checked += 1
            stopped_by_string += want == "stop" and int(tokens[i, counts[i] - 1]) != 11
    assert checked == 4800 and stopped_by_string > 0


def test_candidates_are_few_for_a_character_tokenizer_and_cover_merges():
    tok = Pieces(PIECES)
    cands = stop_string_candidates(tok, ("\n",), len(PIECES))
    expect = {PIECES.index("\n"), PIECES.index("\n\n"), PIECES.index("<"), PIECES.index(">"), PIECES.index("")}
    assert set(np.flatnonzero(cands).tolist()) == expect
    # a word piece's leading space only shows after another token: " the" needs "_the" and "_end"
    cands = stop_string_candidates(tok, ("x ",), len(PIECES))
    assert cands[PIECES.index("_the")] and cands[PIECES.index("_end")] and not cands[PIECES.index("ab")]


def test_undecodable_ids_stay_candidates():
    tok = Pieces(PIECES)
    cands = stop_string_candidates(tok, ("\n",), len(PIECES) + 3)  # a padded embedding: 3 ids past the tokenizer
    assert cands[len(PIECES):].all()


def test_candidates_are_cached_per_tokenizer_and_strings():
    from ponder.step_batch import cached_stop_string_candidates

    tok = Pieces(PIECES)
    a = cached_stop_string_candidates(tok, ("\n",), len(PIECES))
    assert cached_stop_string_candidates(tok, ("\n",), len(PIECES)) is a
    b = cached_stop_string_candidates(tok, ("x.",), len(PIECES))
    assert b is not a and b[PIECES.index("x.")] and not a[PIECES.index("x.")]
    assert cached_stop_string_candidates(Pieces(PIECES), ("\n",), len(PIECES)) is not a  # another tokenizer


def _batch(source):
    from ponder.step_batch import StepBatch
    n = len(source)
    z = np.zeros(n, dtype=np.int64)
    return StepBatch(parents=np.asarray(source, dtype=np.int64), source=np.asarray(source), rng_ids=z,
                     child_index=np.arange(n), seqs=np.arange(n, dtype=np.int32), lengths=z.copy(),
                     trie_states=np.full(n, -1, np.int32), max_tokens=4)


def _partition(rows, groups):
    """The rows grouped together, as a set of frozensets (labels do not matter)."""
    if groups is None:
        return {frozenset([r]) for r in rows.tolist()}
    firsts, of_row = groups
    assert np.array_equal(of_row[firsts], np.arange(firsts.size))
    return {frozenset(rows[of_row == g].tolist()) for g in range(firsts.size)}


def test_row_groups_follow_parent_and_tokens_and_only_split():
    b = _batch([0, 0, 0, 1, 1, 2])
    rows = np.arange(6)
    assert _partition(rows, b.groups_of(rows)) == {frozenset({0, 1, 2}), frozenset({3, 4}), frozenset({5})}
    # same parent and same token stay together; the same token on another parent does not join
    groups = b.regroup(rows, np.array([7, 7, 8, 7, 7, 7]), vocab_size=10)
    assert _partition(rows, groups) == {frozenset({0, 1}), frozenset({2}), frozenset({3, 4}), frozenset({5})}
    assert _partition(rows, b.groups_of(rows)) == _partition(rows, groups)
    # rows 2 and 5 left; rows 0 and 1 part; groups never merge again
    rows = np.array([0, 1, 3, 4])
    groups = b.regroup(rows, np.array([1, 2, 5, 5]), vocab_size=10)
    assert _partition(rows, groups) == {frozenset({0}), frozenset({1}), frozenset({3, 4})}
    assert _partition(rows[2:], b.groups_of(rows[2:])) == {frozenset({3, 4})}
    b.part(rows, np.array([3]))  # row 4 leaves row 3's group
    assert b.groups_of(rows) is None and b.regroup(rows, np.array([5, 5, 5, 5]), vocab_size=10) is None
    assert b.regroup(rows[:1], np.array([5]), vocab_size=10) is None  # a lone row
