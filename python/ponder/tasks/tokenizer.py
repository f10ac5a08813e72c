"""``CharTokenizer``: one token per character, for the bundled Countdown model.

Ids 0, 1, 2 are ``<pad>``, ``<bos>``, ``<eos>``; the characters follow in the order of
``chars``. The default alphabet covers the Countdown prompt, step lines and answer line:
digits, ``+ - * / = ( )``, space, newline, ``: | >`` and lowercase letters. Serialised as a small JSON dict::

    {"type": "char", "version": 1, "chars": "0123...", "special_tokens": ["<pad>", "<bos>", "<eos>"]}
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, List, Mapping

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
DEFAULT_CHARS = "0123456789+-*/=() \n:|>" + "abcdefghijklmnopqrstuvwxyz"
_TYPE = "char"
_VERSION = 1


class CharTokenizer:
    """Character-level tokenizer with pad / bos / eos ids 0 / 1 / 2."""

    def __init__(self, chars: str = DEFAULT_CHARS) -> None:
        if not isinstance(chars, str) or not chars:
            raise ValueError(f"chars must be a non-empty str, got {chars!r}")
        if len(set(chars)) != len(chars):
            dup = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"chars must not repeat a character, got repeats {dup}")
        self.chars = chars
        self._ids = {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(chars)}

    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2

    @property
    def vocab_size(self) -> int:
        return len(SPECIAL_TOKENS) + len(self.chars)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> List[int]:
        """Ids of ``text``'s characters, optionally after ``<bos>`` / before ``<eos>``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        try:
            ids = [self._ids[c] for c in text]
        except KeyError:
            pos = next(i for i, c in enumerate(text) if c not in self._ids)
            raise ValueError(f"text has character {text[pos]!r} at index {pos}, which is not in the "
                             f"vocabulary {self.chars!r}") from None
        return ([self.bos_token_id] if add_bos else []) + ids + ([self.eos_token_id] if add_eos else [])

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; special tokens are dropped, or written as ``<eos>`` etc. when kept."""
        out = []
        num_special, vocab_size, chars = len(SPECIAL_TOKENS), self.vocab_size, self.chars  # read once: a hot loop
        for i, tok in enumerate(ids):
            tok = int(tok)
            if not 0 <= tok < vocab_size:
                raise ValueError(f"ids[{i}] = {tok} is out of range [0, {vocab_size})")
            if tok >= num_special:
                out.append(chars[tok - num_special])
            elif not skip_special_tokens:
                out.append(SPECIAL_TOKENS[tok])
        return "".join(out)

    def to_dict(self) -> Dict[str, Any]:
        return {"type": _TYPE, "version": _VERSION, "chars": self.chars, "special_tokens": list(SPECIAL_TOKENS)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CharTokenizer":
        if not isinstance(data, Mapping):
            raise TypeError(f"data must be a dict, got {type(data).__name__}")
        if data.get("type") != _TYPE or data.get("version") != _VERSION:
            raise ValueError(f"data must describe a {_TYPE!r} tokenizer of version {_VERSION}, got type="
                             f"{data.get('type')!r} version={data.get('version')!r}")
        if list(data.get("special_tokens", ())) != list(SPECIAL_TOKENS):
            raise ValueError(f"special_tokens must be {list(SPECIAL_TOKENS)}, got {data.get('special_tokens')!r}")
        return cls(data.get("chars"))

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharTokenizer":
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other.chars == self.chars

    def __hash__(self) -> int:
        return hash(self.chars)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"
