"""OpenAI request bodies -> what to search: :class:`SearchSpec` (what fixes a session) and
:class:`ParsedRequest` (prompts, budget, n, streaming).

The extra body field ``ponder`` chooses the search per request (every key optional; the
server's defaults fill the rest)::

    "ponder": {
      "algorithm": "mcts" | "beam_search" | "best_of_n" | "sample",
      "budget": {"expansions": 64, "tokens": 4000, "seconds": 10.0, "iterations": 512,
                 "convergence": {"tol": 0.01, "patience": 4}, "stop_on_verified": true},
      "scorer": "value" | "prm" | "none",
      "aggregation": "last" | "min" | "prod" | "mean",
      "token_cost": 0.0,
      "step_delimiter": "\\n",  "max_step_tokens": 64,
      "seed": 0,
      "options": {...},          # fields of MCTSConfig / BeamConfig / BestOfNConfig
      "verifier": true, "constraint": true,   # task models (Countdown) only
      "distinct": true
    }

``"algorithm": "sample"`` is plain sampling: ``n`` independent completions of up to
``max_tokens`` tokens each, ending at ``stop``. For the searches, ``max_tokens`` caps the tokens
generated across all branches (``usage.completion_tokens``; checked after each round).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ponder.scoring import AGGREGATIONS
from ponder.search import ALGORITHMS, Budget
from ponder.serve import fields as F
from ponder.serve.errors import APIError, invalid

SEARCH_ALGORITHMS = tuple(ALGORITHMS)  # mcts, beam_search, best_of_n
SERVE_ALGORITHMS = SEARCH_ALGORITHMS + ("sample",)
SCORERS = ("value", "prm", "none")
MAX_N = 128
BUDGET_KEYS = {"expansions": "max_expansions", "tokens": "max_tokens", "seconds": "max_seconds",
               "iterations": "max_iterations"}
PONDER_KEYS = ("algorithm", "budget", "scorer", "aggregation", "token_cost", "step_delimiter", "max_step_tokens",
               "seed", "options", "verifier", "constraint", "distinct")
_COMMON_KEYS = ("model", "n", "temperature", "top_p", "max_tokens", "stop", "stream", "stream_options", "seed",
                "user", "ponder", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs")
CHAT_KEYS = _COMMON_KEYS + ("messages", "max_completion_tokens", "top_logprobs", "response_format")
COMPLETION_KEYS = _COMMON_KEYS + ("prompt", "echo", "suffix", "best_of")
ROLES = ("system", "developer", "user", "assistant")


@dataclass(frozen=True)
class AlgorithmDefaults:
    """The server's choice for one algorithm: config fields, step temperature, distinct steps
    and budget (``Budget`` keyword arguments)."""

    options: Dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0
    distinct: bool = False
    budget: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerDefaults:
    """What a request gets for every ``ponder`` key it leaves out."""

    model_id: str
    max_context: int
    algorithm: str = "mcts"
    scorer: str = "none"
    scorers: Tuple[str, ...] = ("none",)  # the scorers this server can run
    aggregation: str = "last"
    step_delimiter: str = "\n\n"
    max_step_tokens: int = 256
    sample_max_tokens: int = 256
    task: Optional[str] = None  # "countdown": prompts are Countdown problems, verifier + constraint on
    seed: int = 0
    algorithms: Dict[str, AlgorithmDefaults] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchSpec:
    """Everything that fixes a search session; requests with equal specs share one session.
    ``sample`` runs as best-of-N with ``max_steps=1`` and no scorer."""

    algorithm: str
    options: Tuple[Tuple[str, Any], ...]
    scorer: str
    aggregation: str
    token_cost: float
    stop_strings: Tuple[str, ...]
    max_step_tokens: int
    temperature: float
    top_p: float
    seed: int
    verifier: bool
    constraint: bool
    distinct: bool

    @property
    def session_algorithm(self) -> str:
        return "best_of_n" if self.algorithm == "sample" else self.algorithm


@dataclass
class ParsedRequest:
    kind: str  # "chat" | "completion"
    model: str
    prompts: List[str]  # one per problem (completions may batch several)
    n: int
    stream: bool
    include_usage: bool
    spec: SearchSpec
    budget: Budget
    messages: Optional[List[Tuple[str, str]]] = None  # chat: (role, content) pairs, rendered by the model's template


def parse_chat(body: Any, d: ServerDefaults) -> ParsedRequest:
    body = F.obj(body, "body")
    F.check_keys(body, CHAT_KEYS)
    F.neutral(body, "top_logprobs", (None, 0), "no token log-probabilities are returned")
    if body.get("response_format") not in (None, {"type": "text"}):
        raise invalid("response_format", "only {'type': 'text'} is supported", code="unsupported_value")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", f"must be a non-empty array of messages, got {messages!r}")
    texts = [_message_text(m, f"messages[{i}]") for i, m in enumerate(messages)]
    if "max_tokens" in body and "max_completion_tokens" in body:
        raise invalid("max_completion_tokens", "give max_tokens or max_completion_tokens, not both")
    max_key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    req = _parse_common(body, d, "chat", ["\n".join(t for _, t in texts)], max_key)
    req.messages = texts
    return req


def parse_completion(body: Any, d: ServerDefaults) -> ParsedRequest:
    body = F.obj(body, "body")
    F.check_keys(body, COMPLETION_KEYS)
    F.neutral(body, "echo", (None, False), "the prompt is not echoed")
    F.neutral(body, "suffix", (None,), "no insertion mode")
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise invalid("prompt", f"must be a non-empty string or a non-empty array of non-empty strings, got {prompt!r}")
    req = _parse_common(body, d, "completion", prompts, "max_tokens")
    if body.get("best_of") not in (None, req.n):
        raise invalid("best_of", "only null or equal to n is supported; for best-of-N give "
                                 "ponder.algorithm 'best_of_n' and ponder.options.n", code="unsupported_value")
    return req


def _message_text(m: Any, path: str) -> Tuple[str, str]:
    m = F.obj(m, path)
    role = F.choice(m, "role", f"{path}.role", ROLES)
    content = m.get("content")
    if isinstance(content, list):  # content parts: text only
        parts = []
        for j, part in enumerate(content):
            part = F.obj(part, f"{path}.content[{j}]")
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid(f"{path}.content[{j}]", "only text parts {'type': 'text', 'text': '...'} are supported")
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise invalid(f"{path}.content", f"must be a string or an array of text parts, got {F.json_type(content)}")
    return role, content


def _parse_common(body: Dict[str, Any], d: ServerDefaults, kind: str, prompts, max_key: str) -> ParsedRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model", f"must be the served model's id {d.model_id!r}, got {model!r}")
    if model != d.model_id:
        raise APIError(f"model: the model {model!r} does not exist; this server serves {d.model_id!r}",
                       param="model", status=404, code="model_not_found")
    for key in ("presence_penalty", "frequency_penalty"):
        F.neutral(body, key, (None, 0, 0.0), "sampling has no penalties")
    if body.get("logit_bias") not in (None, {}):
        raise invalid("logit_bias", "is not supported", code="unsupported_value")
    F.neutral(body, "logprobs", (None, False), "no token log-probabilities are returned")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise invalid("user", f"must be a string, got {body['user']!r}")
    n = F.integer(body, "n", "n", 1, MAX_N, default=1)
    stream = F.boolean(body, "stream", "stream", default=False)
    include_usage = False
    if body.get("stream_options") is not None:
        opts = F.obj(body["stream_options"], "stream_options")
        F.check_keys(opts, ("include_usage",), "stream_options")
        include_usage = F.boolean(opts, "include_usage", "stream_options.include_usage", default=False)
    p = F.obj(body["ponder"], "ponder") if body.get("ponder") is not None else {}
    F.check_keys(p, PONDER_KEYS, "ponder")
    algorithm = F.choice(p, "algorithm", "ponder.algorithm", SERVE_ALGORITHMS, default=d.algorithm)
    seed = _seed(body, p, d)
    stop = F.stop_strings(body.get("stop"), "stop")
    max_tokens = F.integer(body, max_key, max_key, 1, default=None)
    top_p = F.number(body, "top_p", "top_p", 0.0, 1.0, lo_open=True, default=1.0)
    if algorithm == "sample":
        spec, budget = _sample(body, p, d, n, stop, max_tokens, top_p, seed)
    else:
        if stop:
            raise invalid("stop", f"applies to ponder.algorithm 'sample'; {algorithm} ends each step at "
                                  "ponder.step_delimiter", code="unsupported_value")
        spec, budget = _search(body, p, d, algorithm, n, max_tokens, top_p, seed)
    return ParsedRequest(kind, model, list(prompts), n, stream, include_usage, spec, budget)


def _seed(body, p, d: ServerDefaults) -> int:
    top = F.integer(body, "seed", "seed", 0, 2**63 - 1, default=None)
    own = F.integer(p, "seed", "ponder.seed", 0, 2**63 - 1, default=None)
    if top is not None and own is not None and top != own:
        raise invalid("ponder.seed", f"conflicts with seed ({own} vs {top}); give one of them")
    return own if own is not None else (top if top is not None else d.seed)


def _task_flags(p, d: ServerDefaults, default: bool) -> Tuple[bool, bool]:
    flags = []
    for key in ("verifier", "constraint"):
        value = F.boolean(p, key, f"ponder.{key}", default=default and d.task is not None)
        if value and d.task is None:
            raise invalid(f"ponder.{key}", "needs a task model (the served model has no built-in task)")
        flags.append(value)
    return flags[0], flags[1]


def _sample(body, p, d: ServerDefaults, n, stop, max_tokens, top_p, seed) -> Tuple[SearchSpec, Budget]:
    for key in ("budget", "scorer", "aggregation", "token_cost", "step_delimiter", "max_step_tokens", "options",
                "distinct"):
        if key in p:
            raise invalid(f"ponder.{key}", "does not apply to ponder.algorithm 'sample' (plain sampling: use n, "
                                           "temperature, top_p, max_tokens and stop)")
    verifier, constraint = _task_flags(p, d, default=False)
    temperature = F.number(body, "temperature", "temperature", 0.0, default=1.0)
    spec = SearchSpec("sample", (("max_steps", 1), ("n", n)), "none", "last", 0.0, stop,
                      max_tokens if max_tokens is not None else d.sample_max_tokens, temperature, top_p, seed,
                      verifier, constraint, False)
    return spec, Budget(max_iterations=1)


def _search(body, p, d: ServerDefaults, algorithm, n, max_tokens, top_p, seed) -> Tuple[SearchSpec, Budget]:
    ad = d.algorithms.get(algorithm, AlgorithmDefaults())
    scorer = F.choice(p, "scorer", "ponder.scorer", SCORERS, default=d.scorer)
    if scorer not in d.scorers:
        raise invalid("ponder.scorer", f"{scorer!r} is not available on this server (available: "
                                       f"{', '.join(d.scorers)}; 'prm' needs `ponder serve --prm`, 'value' a model "
                                       "with a value head)")
    aggregation = F.choice(p, "aggregation", "ponder.aggregation", AGGREGATIONS, default=d.aggregation)
    token_cost = F.number(p, "token_cost", "ponder.token_cost", 0.0, default=0.0)
    delimiter = F.string(p, "step_delimiter", "ponder.step_delimiter", default=d.step_delimiter)
    step_tokens = F.integer(p, "max_step_tokens", "ponder.max_step_tokens", 1, d.max_context, default=d.max_step_tokens)
    distinct = F.boolean(p, "distinct", "ponder.distinct", default=ad.distinct)
    verifier, constraint = _task_flags(p, d, default=True)
    # a task's search temperature only widens draws among legal steps; free decoding samples at <= 1
    default_t = ad.temperature if (constraint or d.task is None) else min(ad.temperature, 1.0)
    temperature = F.number(body, "temperature", "temperature", 0.0, default=default_t)
    options = _options(p, algorithm, ad)
    if algorithm == "best_of_n" and n > options["n"]:
        raise invalid("n", f"asks for {n} answers but best-of-N draws ponder.options.n = {options['n']} samples")
    budget = _budget(p, ad, max_tokens, verifier)
    spec = SearchSpec(algorithm, tuple(sorted(options.items())), scorer, aggregation, token_cost, (delimiter,),
                      step_tokens, temperature, top_p, seed, verifier, constraint, distinct)
    return spec, budget


def _options(p, algorithm: str, ad: AlgorithmDefaults) -> Dict[str, Any]:
    cls = ALGORITHMS[algorithm][1]
    names = [f.name for f in dataclasses.fields(cls) if f.name != "answer_fn"]
    given = F.obj(p["options"], "ponder.options") if p.get("options") is not None else {}
    F.check_keys(given, names, "ponder.options")
    for key, value in given.items():
        if not isinstance(value, (bool, int, float, str)):
            raise invalid(f"ponder.options.{key}", f"must be a number, string or boolean, got {F.json_type(value)}")
    options = {**ad.options, **given}
    try:
        cls(**options)
    except (TypeError, ValueError) as err:
        bad = next((k for k in given if f".{k} " in str(err) or f".{k}," in str(err)), None)
        raise invalid(f"ponder.options.{bad}" if bad else "ponder.options", str(err)) from None
    return options


def _budget(p, ad: AlgorithmDefaults, max_tokens: Optional[int], verifier: bool) -> Budget:
    given = F.obj(p["budget"], "ponder.budget") if p.get("budget") is not None else {}
    F.check_keys(given, (*BUDGET_KEYS, "convergence", "stop_on_verified", "kv_bytes"), "ponder.budget")
    kw = dict(ad.budget)
    kw.setdefault("stop_on_verified", verifier)
    for key, name in BUDGET_KEYS.items():
        if key in given:
            path = f"ponder.budget.{key}"
            kw[name] = (F.number(given, key, path, 0.0, lo_open=True) if key == "seconds"
                        else F.integer(given, key, path, 1))
    if "expansions" in given and "iterations" not in given and kw.get("max_iterations") is not None:
        # terminal leaves cost an MCTS iteration but no expansion; the default cap scales with the ask
        kw["max_iterations"] = max(kw["max_iterations"], 16 * kw["max_expansions"])
    if "kv_bytes" in given:
        kw["max_kv_bytes"] = F.integer(given, "kv_bytes", "ponder.budget.kv_bytes", 1)
    if given.get("convergence") is not None:
        conv = F.obj(given["convergence"], "ponder.budget.convergence")
        F.check_keys(conv, ("tol", "patience"), "ponder.budget.convergence")
        kw["converge_tol"] = F.number(conv, "tol", "ponder.budget.convergence.tol", 0.0)
        kw["converge_patience"] = F.integer(conv, "patience", "ponder.budget.convergence.patience", 1)
    if "stop_on_verified" in given:
        kw["stop_on_verified"] = F.boolean(given, "stop_on_verified", "ponder.budget.stop_on_verified")
    if max_tokens is not None and "tokens" not in given:
        kw["max_tokens"] = max_tokens
    try:
        return Budget(**kw)
    except (TypeError, ValueError) as err:
        raise invalid("ponder.budget", str(err)) from None
