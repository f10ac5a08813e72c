"""Reading ``/v1/completions`` answers from the servers that speak it, each a little differently.

What one sampled step needs is its token ids, their log-probabilities, its text (with the stop
string that ended it) and why it ended. The servers report these in different layouts:

==================  =======================================  ======================================
server              log-probabilities                        which stop ended the step
==================  =======================================  ======================================
vLLM, SGLang        legacy ``{tokens, token_logprobs}``;      ``stop_reason``: the stop string or
                    ``tokens`` are ``"token_id:N"`` with      token id, null for EOS; with
                    ``return_tokens_as_token_ids``            ``include_stop_str_in_output`` the
                                                             text keeps the stop string
llama.cpp server    chat layout ``{content: [{id, token,      not reported: ``finish_reason`` is
                    logprob}]}``                             ``"stop"`` for EOS and stop strings,
                                                             and the text drops the stop string
llama-cpp-python    legacy layout, token texts only          as llama.cpp
==================  =======================================  ======================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

from ponder.backends.http import BackendError

TOKEN_ID_PREFIX = "token_id:"


@dataclass
class Sample:
    """One sampled step: ``token_ids`` (None when the server reported no ids), ``logprobs`` (one
    per token the server reported), ``text``, and the finish reason in ponder's terms
    (``"stop" | "eos" | "length"``)."""

    token_ids: Optional[List[int]]
    logprobs: List[float]
    text: str
    finish: str
    appended: str = ""  # a stop string the server left out of its text, added back here


def _stopped(ids, logprobs, text: str, which: str) -> Sample:
    if text.endswith(which):
        return Sample(ids, logprobs, text, "stop")
    return Sample(ids, logprobs, text + which, "stop", appended=which)


def _fail(url: str, what: str) -> BackendError:
    return BackendError(f"{url} sent a malformed completion: {what}", 200)


def choices_of(doc: dict, url: str) -> list:
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _fail(url, f"expected a non-empty 'choices' list, got {str(choices)[:120]!r}")
    return sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)


def _logprobs(lp, url: str):
    """(token ids or None, log-probabilities) from either layout; ([], []) when absent."""
    if lp is None:
        return None, []
    if not isinstance(lp, dict):
        raise _fail(url, f"'logprobs' must be an object or null, got {type(lp).__name__}")
    if "content" in lp:  # chat layout (llama.cpp server)
        content = lp["content"] or []
        try:
            values = [float(e["logprob"]) for e in content]
        except (TypeError, KeyError, ValueError):
            raise _fail(url, "chat-layout logprobs entries need a numeric 'logprob'") from None
        ids = [e.get("id") for e in content]
        return (ids if ids and all(isinstance(i, int) for i in ids) else None), values
    values = lp.get("token_logprobs")
    tokens = lp.get("tokens")
    if not isinstance(values, list) or (tokens is not None and not isinstance(tokens, list)):
        raise _fail(url, "legacy logprobs need 'token_logprobs' (and 'tokens') lists")
    # vLLM reports None for a first token it has no distribution for; it never is one here.
    values = [float(v) if v is not None else 0.0 for v in values]
    ids = None
    if tokens and all(isinstance(t, str) and t.startswith(TOKEN_ID_PREFIX) for t in tokens):
        ids = [int(t[len(TOKEN_ID_PREFIX):]) for t in tokens]
    return ids, values


def parse_choice(choice, url: str, stop_strings: Sequence[str], eos_ids: Sequence[int],
                 stop_token_ids: Sequence[int]) -> Sample:
    """One choice as a :class:`Sample`. A step that ended on a stop string keeps it in ``text``
    (appended when the server dropped it; when the server does not say which of several stop
    strings matched, the first is assumed)."""
    if not isinstance(choice, dict) or not isinstance(choice.get("text"), str):
        raise _fail(url, f"a choice needs a 'text' string, got {str(choice)[:120]!r}")
    text = choice["text"]
    reason = choice.get("finish_reason")
    if reason not in ("stop", "length", "eos", None):
        raise _fail(url, f"unknown finish_reason {reason!r}")
    ids, logprobs = _logprobs(choice.get("logprobs"), url)
    if reason == "length" or reason is None:
        return Sample(ids, logprobs, text, "length")
    if reason == "eos":
        return Sample(ids, logprobs, text, "eos")
    if ids and ids[-1] in eos_ids:
        return Sample(ids[:-1], logprobs[:-1], text, "eos")
    if "stop_reason" in choice:  # vLLM / SGLang: the matched stop string or token, None for EOS
        which = choice["stop_reason"]
        if which is None:
            return Sample(ids, logprobs, text, "eos")
        if isinstance(which, str):
            return _stopped(ids, logprobs, text, which)
        if isinstance(which, int) and which not in stop_token_ids:
            return Sample(ids, logprobs, text, "eos")
        return Sample(ids, logprobs, text, "stop")
    which = choice.get("stopping_word")
    if isinstance(which, str) and which:
        return _stopped(ids, logprobs, text, which)
    if not stop_strings and not stop_token_ids:
        return Sample(ids, logprobs, text, "eos")
    if stop_strings and not any(text.endswith(s) for s in stop_strings):
        return _stopped(ids, logprobs, text, stop_strings[0])
    return Sample(ids, logprobs, text, "stop")
