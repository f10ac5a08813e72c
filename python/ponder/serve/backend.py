"""The served model: loading it (and a PRM), the server's search defaults, prompts -> token ids,
and one search session per :class:`~ponder.serve.protocol.SearchSpec`.

A model path is a Hugging Face checkpoint directory, a GGUF file, or a Countdown model directory
written by ``ponder train countdown`` (the bundled one when no path is given). A Countdown model
makes the server a Countdown solver: prompts are problems (``"3 7 25 50 -> 175 any"``), the exact
checker is the verifier and decoding keeps to legal steps, with the defaults of ``ponder demo``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import ponder
from ponder.search import ALGORITHMS
from ponder.serve.errors import APIError, invalid
from ponder.serve.protocol import SERVE_ALGORITHMS, AlgorithmDefaults, ParsedRequest, SearchSpec, ServerDefaults


def _is_countdown_dir(path: Path) -> bool:
    try:
        with open(path / "tokenizer.json") as f:
            return json.load(f).get("type") == "char"
    except (OSError, ValueError, AttributeError):
        return False


def load_model(path: Optional[str]):
    """(model, tokenizer, task) for ``path``; task is ``"countdown"`` or None."""
    from ponder.tasks import demo

    if path is None or (os.path.isdir(path) and _is_countdown_dir(Path(path))):
        model, tok = demo.load_model(path)
        return model, tok, "countdown"
    from ponder.models import load, load_tokenizer

    return load(path), load_tokenizer(path), None


def countdown_defaults(model_id: str, max_context: int, scorers: Tuple[str, ...]) -> ServerDefaults:
    """``ponder demo``'s strategies: legal steps, distinct children, value-head scores."""
    from ponder.tasks import demo

    steps = demo.MAX_STEPS
    return ServerDefaults(
        model_id=model_id, max_context=max_context, algorithm="mcts", scorer="value", scorers=scorers,
        step_delimiter="\n", max_step_tokens=demo.STEP_STOP.max_step_tokens, sample_max_tokens=128, task="countdown",
        algorithms={
            "mcts": AlgorithmDefaults(dict(demo.MCTS_OPTIONS), demo.SEARCH_TEMPERATURE, True,
                                      dict(max_expansions=32, max_iterations=16 * 32)),
            "beam_search": AlgorithmDefaults(dict(width=2, expansion=demo.BEAM_EXPANSION, max_steps=steps),
                                             demo.SEARCH_TEMPERATURE, True, dict(max_iterations=steps)),
            "best_of_n": AlgorithmDefaults(dict(n=8, max_steps=steps), 1.0, False, dict(max_iterations=steps)),
        })


def generic_defaults(model_id: str, max_context: int, scorers: Tuple[str, ...]) -> ServerDefaults:
    """Paragraph steps; the best scorer the server has (PRM, then value head, then none)."""
    scorer = next(s for s in ("prm", "value", "none") if s in scorers)
    return ServerDefaults(
        model_id=model_id, max_context=max_context, algorithm="mcts", scorer=scorer, scorers=scorers,
        algorithms={
            "mcts": AlgorithmDefaults(dict(num_children=4), 1.0, True, dict(max_expansions=16, max_iterations=256)),
            "beam_search": AlgorithmDefaults(dict(width=4, expansion=4, max_steps=16), 1.0, True,
                                             dict(max_iterations=16)),
            "best_of_n": AlgorithmDefaults(dict(n=8, max_steps=16), 1.0, False, dict(max_iterations=16)),
        })


@dataclass
class Backend:
    """The one engine of the server (and the PRM's), its tokenizer and defaults. Only the
    scheduler's thread calls the engines."""

    engine: Any
    defaults: ServerDefaults
    prm: Any = None  # a TokenPairPRM on its own engine, or None
    # character-level models: lower-case free text and drop the characters the vocabulary lacks
    # (instead of a 400), for clients such as LLM-as-judge proxies that send English prompts
    drop_unknown_chars: bool = False
    # keep only the last 3/4 of the context of a longer prompt instead of answering 400
    truncate_prompts: bool = False

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    # ------------------------------------------------------------------ prompts
    def encode(self, req: ParsedRequest) -> Tuple[List[List[int]], List[Any]]:
        """Token ids and task problem (or None) of every prompt; 400 for a prompt that does not
        fit the context or is not a problem of the task."""
        d, spec = self.defaults, req.spec
        param = "messages" if req.kind == "chat" else "prompt"
        texts = [self._render(req)] if req.kind == "chat" else list(req.prompts)
        token_lists, problems = [], []
        for i, text in enumerate(texts):
            where = param if req.kind == "chat" or len(texts) == 1 else f"prompt[{i}]"
            problem = None
            if d.task == "countdown":  # a problem is fed in the model's own prompt format
                from ponder.tasks.countdown import Problem

                try:
                    problem = Problem.from_prompt(text.strip() + "\n")
                    text = problem.prompt()
                except (TypeError, ValueError) as err:
                    if spec.verifier or spec.constraint:
                        raise invalid(where, f"is not a Countdown problem ({err}); write e.g. '3 7 25 50 -> 175 "
                                             "any', or set ponder.verifier and ponder.constraint to false") from None
            try:
                ids = self._tokens(text, templated=req.kind == "chat" and self._has_template())
            except (TypeError, ValueError) as err:
                raise invalid(where, f"cannot be tokenized: {err}") from None
            if not ids:
                raise invalid(where, "is empty after tokenization")
            if self.truncate_prompts and len(ids) > d.max_context * 3 // 4:
                ids = ids[-(d.max_context * 3 // 4):]  # the end of a conversation matters most
            room = d.max_context - len(ids)
            if room < 1:
                raise APIError(f"{where}: the prompt has {len(ids)} tokens; this model's context is {d.max_context} "
                               "tokens and the answer needs room", param=where, code="context_length_exceeded")
            token_lists.append(ids)
            problems.append(problem)
        return token_lists, problems

    def _has_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None)) and hasattr(self.tokenizer, "apply_chat_template")

    def _render(self, req: ParsedRequest) -> str:
        if self._has_template():
            msgs = [{"role": r, "content": c} for r, c in req.messages]
            return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return "\n".join(c for _, c in req.messages)  # no template: the contents, one per line

    def _tokens(self, text: str, templated: bool) -> List[int]:
        chars = getattr(self.tokenizer, "chars", None)
        if self.drop_unknown_chars and chars is not None:  # a character-level model
            text = "".join(c for c in text.lower() if c in chars)
        if templated:  # the template already wrote the special tokens
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        return list(self.tokenizer.encode(text))

    # ------------------------------------------------------------------ sessions
    def new_session(self, spec: SearchSpec, problems: Dict[int, Any]):
        """A live session for ``spec``; ``problems`` maps a tree's index to its task problem."""
        scorer = {"value": ponder.ValueHead(), "prm": self.prm, "none": None}[spec.scorer]
        verifier = constraint = None
        if spec.verifier or spec.constraint:
            from ponder.tasks import demo

            verifier = demo.verifier(problems) if spec.verifier else None
            constraint = demo.legal_step_constraint(problems, self.tokenizer) if spec.constraint else None
        session_cls, config_cls = ALGORITHMS[spec.session_algorithm]
        return session_cls(
            self.engine, scorer, config_cls(**dict(spec.options)), verifier=verifier,
            aggregation=ponder.Aggregation(spec.aggregation, spec.token_cost),
            stop=ponder.StepStop(strings=spec.stop_strings, max_step_tokens=spec.max_step_tokens),
            sampling=ponder.SamplingParams(temperature=spec.temperature, top_p=spec.top_p), seed=spec.seed,
            progress=False, constraint=constraint, distinct=spec.distinct)


def build_backend(model: Optional[str] = None, prm: Optional[str] = None, max_kv_bytes: int = 256 << 20,
                  model_id: Optional[str] = None, prm_good: str = "+", prm_bad: str = "-",
                  prm_step_tag: Optional[str] = None, algorithm: Optional[str] = None,
                  drop_unknown_chars: bool = False, truncate_prompts: bool = False) -> Backend:
    """Load the model (and PRM) and build the engine(s); ValueError / FileNotFoundError name the
    argument at fault."""
    policy, tok, task = load_model(model)
    engine = ponder.Engine(policy, tok, max_kv_bytes=max_kv_bytes)
    scorers = ["none"]
    if getattr(policy, "value_head", None) is not None:
        scorers.append("value")
    scorer = None
    if prm is not None:
        prm_model, prm_tok, _ = load_model(prm)
        ids = []
        for name, text in (("prm_good", prm_good), ("prm_bad", prm_bad)):
            enc = prm_tok.encode(text, add_special_tokens=False) if not hasattr(prm_tok, "chars") else prm_tok.encode(text)
            if len(enc) != 1:
                raise ValueError(f"{name} must be one token of the PRM's tokenizer, {text!r} encodes to {enc}")
            ids.append(int(enc[0]))
        scorer = ponder.TokenPairPRM(ids[0], ids[1], step_tag=prm_step_tag,
                                     engine=ponder.Engine(prm_model, prm_tok, max_kv_bytes=max_kv_bytes))
        scorers.append("prm")
    name = model_id or ("countdown" if model is None else Path(model).name or str(model))
    ctx = engine.max_context
    make = countdown_defaults if task == "countdown" else generic_defaults
    defaults = make(name, ctx, tuple(scorers))
    if algorithm is not None:
        if algorithm not in SERVE_ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(SERVE_ALGORITHMS)}, got {algorithm!r}")
        defaults = dataclasses.replace(defaults, algorithm=algorithm)
    return Backend(engine, defaults, scorer, drop_unknown_chars=drop_unknown_chars, truncate_prompts=truncate_prompts)
