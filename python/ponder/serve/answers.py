"""Search results -> OpenAI choices, usage and the ``ponder`` report of a response.

For a search, choice 0 is the algorithm's answer (a verified answer first) and the other
choices are the next best distinct answers of the tree: finished paths before unfinished ones,
then by path score; a tree may hold fewer than ``n`` distinct answers, and then fewer choices
come back. For ``"sample"`` the choices are the ``n`` samples in the order they were drawn.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

from ponder.serve.protocol import ParsedRequest


def path_text(nodes: Dict[str, list], node: int) -> str:
    """The generated text from the root (excluded: its text is the prompt) down to ``node``."""
    parts = []
    while node > 0:
        parts.append(nodes["text"][node])
        node = nodes["parent"][node]
    return "".join(reversed(parts))


def search_answers(result, n: int) -> List[Tuple[str, str]]:
    """Up to ``n`` distinct (text, finish_reason) answers of one search result, best first."""
    nodes = result.nodes
    num = len(nodes["parent"])
    has_child = set(nodes["parent"][1:])
    first = result.path[-1]
    leaves = [i for i in range(1, num) if i not in has_child or nodes["terminal"][i]]
    leaves.sort(key=lambda i: (not nodes["terminal"][i], -nodes["path_score"][i], i))
    out, seen = [], set()
    for i in [first] + leaves:
        text = result.answer if i == first else path_text(nodes, i)
        key = text.strip()
        if key in seen or (i == 0 and out):
            continue
        seen.add(key)
        out.append((text, "stop" if nodes["terminal"][i] else "length"))
        if len(out) == n:
            break
    return out


def sample_answers(result, stop: Sequence[str]) -> List[Tuple[str, str]]:
    """Every sample (a child of the root), with the stop string cut off as OpenAI does."""
    nodes = result.nodes
    out = []
    for i in range(1, len(nodes["parent"])):
        if nodes["parent"][i] != 0:
            continue
        text, reason = nodes["text"][i], "stop" if nodes["terminal"][i] else "length"
        for s in stop:
            at = text.find(s)
            if at >= 0:
                text, reason = text[:at], "stop"
                break
        out.append((text, reason))
    return out


def scored_steps(req: ParsedRequest, result) -> int:
    """Steps a scorer or verifier judged: every node but the root, unless nothing scores them."""
    if req.spec.scorer == "none" and not req.spec.verifier:
        return 0
    return len(result.nodes["parent"]) - 1


def report(req: ParsedRequest, results: Sequence, prompt_tokens: int, extra: Dict[str, Any]):
    """(choices as (index, text, finish_reason), usage, ponder report) of a finished request."""
    choices = []
    for p, r in enumerate(results):
        found = (sample_answers(r, req.spec.stop_strings) if req.spec.algorithm == "sample"
                 else search_answers(r, req.n))
        choices += [(p * req.n + j, text, reason) for j, (text, reason) in enumerate(found)]
    generated = sum(int(r.stats["tokens_generated"]) for r in results)
    steps = sum(scored_steps(req, r) for r in results)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": generated, "total_tokens": prompt_tokens + generated,
             "scored_steps": steps}
    problems = [{"stop_reason": r.stop_reason, "verified": bool(r.verified), "score": float(r.score),
                 "expansions": int(r.stats["expansions"]), "iterations": int(r.stats["iterations"]),
                 "tokens_generated": int(r.stats["tokens_generated"])} for r in results]
    ponder = {"algorithm": req.spec.algorithm, "stop_reason": problems[0]["stop_reason"], "problems": problems,
              **extra}
    return choices, usage, ponder


def chat_body(rid: str, created: int, model: str, choices, usage, ponder) -> Dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                         "logprobs": None} for i, text, reason in choices],
            "usage": usage, "ponder": ponder}


def completion_body(rid: str, created: int, model: str, choices, usage, ponder) -> Dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": i, "text": text, "finish_reason": reason, "logprobs": None}
                        for i, text, reason in choices],
            "usage": usage, "ponder": ponder}
