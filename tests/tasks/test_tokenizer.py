"""CharTokenizer: round trips, special tokens, serialisation, bad input."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ponder.tasks import countdown as cd
from ponder.tasks.tokenizer import DEFAULT_CHARS, SPECIAL_TOKENS, CharTokenizer


@given(st.text(alphabet=DEFAULT_CHARS, max_size=200))
def test_round_trip(text):
    tok = CharTokenizer()
    ids = tok.encode(text)
    assert len(ids) == len(text) and all(len(SPECIAL_TOKENS) <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_special_tokens_and_prompt():
    tok = CharTokenizer()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.vocab_size == 3 + len(DEFAULT_CHARS)
    p = cd.Problem((3, 7, 25, 50), 175, all_numbers=True)
    text = p.prompt() + "25 * 7 = 175\n"
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=False) == "<bos>" + text + "<eos>"
    assert tok.encode("0") == [3]


def test_serialisation_round_trip(tmp_path):
    tok = CharTokenizer("ab\n")
    data = json.loads(json.dumps(tok.to_dict()))
    assert CharTokenizer.from_dict(data) == tok
    tok.save(tmp_path / "tokenizer.json")
    back = CharTokenizer.load(tmp_path / "tokenizer.json")
    assert back == tok and back.encode("ba\n") == [4, 3, 5]
    assert CharTokenizer.from_dict(CharTokenizer().to_dict()) != tok


def test_bad_input_is_reported():
    tok = CharTokenizer()
    with pytest.raises(ValueError, match=r"character 'X' at index 2"):
        tok.encode("12X")
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode(12)
    with pytest.raises(ValueError, match=r"ids\[1\] = 99 is out of range"):
        tok.decode([3, 99])
    with pytest.raises(ValueError, match="must not repeat"):
        CharTokenizer("aab")
    with pytest.raises(ValueError, match="non-empty str"):
        CharTokenizer("")
    with pytest.raises(ValueError, match="'char' tokenizer"):
        CharTokenizer.from_dict({"type": "bpe", "version": 1, "chars": "ab"})
    with pytest.raises(ValueError, match="special_tokens"):
        CharTokenizer.from_dict({"type": "char", "version": 1, "chars": "ab", "special_tokens": ["<pad>"]})
    assert tok.decode([5]) == "2"  # still usable after the errors
